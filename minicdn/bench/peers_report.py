"""The figures of `minicdn bench --peers` and how they are shown: one row per kind of work, in it minicdn and
each peer, every one measured ``runs`` times; the table (and ``--json``) gives the median of the runs,
the ratio of minicdn's median to each peer's, and the issue's target beside it.

A row's ``details`` is the place for figures that explain one contender (the upload row carries the
replication and processing times); the upload row's ``budget`` is where an upload's CPU and time go
(``minicdn.bench.budget``).
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from minicdn.bench.budget import print_budget


@dataclass(frozen=True)
class Sample:
    """One timed load of one contender."""

    rate: float  # requests (or files) per second
    p50_ms: float
    p99_ms: float
    count: int
    cpu_s: dict[str, float]  # server (process group) -> CPU seconds it used during the load

    @property
    def cpu_per_1k(self) -> float | None:
        return sum(self.cpu_s.values()) / self.count * 1000 if self.cpu_s and self.count else None


@dataclass
class Contender:
    name: str  # "minicdn node", "SeaweedFS volume", ...
    samples: list[Sample] = field(default_factory=list)

    def median(self, attr: str) -> float | None:
        values = [v for v in (getattr(s, attr) for s in self.samples) if v is not None]
        return statistics.median(values) if values else None

    def cpu_by_server(self) -> dict[str, float]:
        """Server -> median CPU seconds per 1,000 requests."""
        names = {name for s in self.samples for name in s.cpu_s}
        return {
            name: statistics.median(s.cpu_s.get(name, 0.0) / s.count * 1000 for s in self.samples if s.count)
            for name in sorted(names)
        }


@dataclass(frozen=True)
class Target:
    """minicdn / peer ≥ ``ratio`` (and minicdn's p99 ≤ ``p99_ms``); ``judged`` False for a target that applies
    to a contender this bench does not measure yet (then it is shown, never called met or missed)."""

    ratio: float
    source: str  # which issue sets it
    p99_ms: float | None = None
    judged: bool = True
    note: str = ""

    def text(self) -> str:
        out = f"≥ {self.ratio:g}x"
        if self.p99_ms is not None:
            out += f", p99 ≤ {self.p99_ms:g} ms"
        return f"{out} {self.note}".strip()


@dataclass(frozen=True)
class Detail:
    """A figure that explains a contender's result: ``key`` in JSON, ``label`` and ``unit`` in the text."""

    key: str
    label: str
    value: float
    unit: str = ""

    def text(self) -> str:
        digits = 0 if abs(self.value) >= 100 or float(self.value).is_integer() else 1 if abs(self.value) >= 10 else 2
        return f"{self.label} {self.value:,.{digits}f}{' ' + self.unit if self.unit else ''}"


@dataclass
class Row:
    key: str
    title: str
    unit: str  # "req/s" or "files/s"
    minicdn: Contender
    peers: list[Contender] = field(default_factory=list)
    targets: dict[str, Target] = field(default_factory=dict)  # peer name -> target
    notes: list[str] = field(default_factory=list)
    details: list[Detail] = field(default_factory=list)
    budget: dict[str, Any] = field(default_factory=dict)  # the upload row's (``budget.budget_json``)

    def ratio(self, peer: Contender) -> float | None:
        mine, theirs = self.minicdn.median("rate"), peer.median("rate")
        return mine / theirs if mine and theirs else None

    def met(self, peer: Contender) -> bool | None:
        target, ratio = self.targets.get(peer.name), self.ratio(peer)
        if target is None or not target.judged or ratio is None:
            return None
        p99 = self.minicdn.median("p99_ms")
        return ratio >= target.ratio and (target.p99_ms is None or (p99 is not None and p99 <= target.p99_ms))


def _num(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _ms(x: float | None) -> str:
    return "-" if x is None else (f"{x:.2f}" if x < 10 else f"{x:.1f}")


def print_table(rows: list[Row], loader: str, runs: int, console: Console) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    table = Table(
        title=f"minicdn bench --peers: medians of {runs} run(s); {loader}; {os.cpu_count()} cores, "
        f"load average at the end {load}"
    )
    for col, justify in (
        ("work", "left"),
        ("server", "left"),
        ("rate", "right"),
        ("p50 ms", "right"),
        ("p99 ms", "right"),
        ("CPU s / 1k", "right"),
        ("minicdn / peer", "right"),
        ("target", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        for i, c in enumerate([row.minicdn, *row.peers]):
            ratio, target, met = "", "", None
            if c is not row.minicdn:
                ratio = f"{r:.2f}x" if (r := row.ratio(c)) is not None else "-"
                if (t := row.targets.get(c.name)) is not None:
                    met = row.met(c)
                    target = t.text() + ("" if met is None else (": met" if met else ": not met"))
            table.add_row(
                row.title if i == 0 else "",
                c.name,
                f"{_num(c.median('rate'))} {row.unit}",
                _ms(c.median("p50_ms")),
                _ms(c.median("p99_ms")),
                _num(c.median("cpu_per_1k"), 2),
                ratio,
                target,
            )
        table.add_section()
    console.print(table)
    for row in rows:
        lines = list(row.notes)
        split = [c for c in (row.minicdn, *row.peers) if len(c.cpu_by_server()) > 1]
        if split:
            lines.append(
                "CPU s / 1k by process: "
                + "; ".join(
                    f"{c.name}: " + ", ".join(f"{k} {v:.2f}" for k, v in c.cpu_by_server().items()) for c in split
                )
            )
        if row.details:
            lines.append("; ".join(d.text() for d in row.details))
        for line in lines:
            console.print(f"{row.title}: {line}", highlight=False, soft_wrap=True)
        if row.budget:
            print_budget(row.budget, console)


def as_json(rows: list[Row], loader: str, runs: int) -> dict[str, Any]:
    """The `minicdn bench --peers --json` document (docs/operations.md)."""

    def r(x: float | None, digits: int = 3) -> float | None:
        return None if x is None else round(x, digits)

    def contender(c: Contender) -> dict[str, Any]:
        return {
            "name": c.name,
            "rate_per_s": r(c.median("rate"), 1),
            "p50_ms": r(c.median("p50_ms")),
            "p99_ms": r(c.median("p99_ms")),
            "cpu_s_per_1k": r(c.median("cpu_per_1k")),
            "cpu_s_per_1k_by_process": {k: r(v) for k, v in c.cpu_by_server().items()},
            "runs": [
                {
                    "rate_per_s": r(s.rate, 1),
                    "p50_ms": r(s.p50_ms),
                    "p99_ms": r(s.p99_ms),
                    "count": s.count,
                    "cpu_s": {k: r(v, 2) for k, v in s.cpu_s.items()},
                }
                for s in c.samples
            ],
        }

    return {
        "loader": loader,
        "runs": runs,
        "cores": os.cpu_count(),
        "rows": [
            {
                "work": row.key,
                "title": row.title,
                "unit": row.unit,
                "minicdn": contender(row.minicdn),
                "peers": [
                    {
                        **contender(p),
                        "ratio": r(row.ratio(p)),
                        "target": row.targets[p.name].text() if p.name in row.targets else None,
                        "target_source": row.targets[p.name].source if p.name in row.targets else None,
                        "met": row.met(p),
                    }
                    for p in row.peers
                ],
                "notes": row.notes,
                "details": {d.key: r(d.value) for d in row.details},
                **({"budget": row.budget} if row.budget else {}),
            }
            for row in rows
        ],
    }
