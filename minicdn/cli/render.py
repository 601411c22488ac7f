"""How the `minicdn` CLI shows data: record tables that fit the terminal without cutting ids, and JSON.

- ``--json`` prints one JSON document to stdout (`emit_json`); nothing else goes to stdout then.
- A table uses the console's width (the terminal's, else ``COLUMNS``, else 80). Every column is ``no_wrap``
  except free text (names, reasons), so an id, region or state is never cut or split across lines. When the
  table is too wide, optional columns are left out from the last one back (the columns marked ``keep`` stay),
  and when even those do not fit, each record becomes a block: its kept values on one line, then one
  ``label: value`` line per other column. Either way the kept values of a record share one line, so
  ``minicdn status | grep eu-west`` finds the eu-west rows.
- Off a terminal rich prints no colour and no bars' escape codes: the output stays plain text.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rich.console import Console
from rich.table import Table
from rich.text import Text

GAP = 2  # spaces between columns


def out() -> Console:
    """A console on stdout, made per command so it reads the current width (`COLUMNS`) and stream."""
    return Console(highlight=False)


def err() -> Console:
    return Console(stderr=True, highlight=False)


def emit_json(data: Any) -> None:
    """One JSON document on stdout: plain `json` (no rich) so a long string is never wrapped."""
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's `(default: X)` after each option's help, except where there is no value to show (None, off,
    empty): those help texts say what happens then themselves."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == []:
            return action.help or ""
        return super()._get_help_string(action) or ""


def add_json_flag(parser: argparse.ArgumentParser, shape: str) -> None:
    """``--json``: print ``shape`` (documented in docs/operations.md) instead of text."""
    parser.add_argument("--json", action="store_true", help=f"print JSON instead of text: {shape}")


@dataclass(frozen=True)
class Column:
    name: str
    keep: bool = False  # an identifying column: never left out
    justify: Literal["left", "right"] = "left"
    wrap: bool = False  # free text (a name, a reason): may wrap at spaces in a narrow table


def human(n: float | None) -> str:
    """Bytes in SI units (``1.2 GB``); ``-`` when unknown."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return str(n)


def bar(ratio: float, width: int = 12) -> str:
    """A coloured usage bar with its percentage (markup)."""
    filled = min(width, max(0, round(ratio * width)))
    colour = "red" if ratio >= 0.95 else "yellow" if ratio >= 0.8 else "green"
    return f"[{colour}]{'█' * filled}[/{colour}]{'░' * (width - filled)} {ratio:4.0%}"


def _width(cell: str) -> int:
    return max((Text.from_markup(line).cell_len for line in cell.splitlines() or [""]), default=0)


# A wrapping column counts at most this wide when deciding what fits (rich wraps it at spaces beyond).
WRAP_FLOOR = 16


def _needed(columns: Sequence[Column], rows: Sequence[Sequence[str]], indexes: list[int]) -> int:
    total = 0
    for i in indexes:
        w = max([_width(columns[i].name), *(_width(r[i]) for r in rows)])
        total += min(w, WRAP_FLOOR) if columns[i].wrap else w
    return total + GAP * (len(indexes) - 1)


def fit(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int) -> list[int] | None:
    """The columns to show at ``width``: all, or the kept ones plus the optional ones that still fit (in their
    order); None when even the kept ones do not fit (then a record is a block)."""
    shown = list(range(len(columns)))
    optional = [i for i in shown if not columns[i].keep]
    while _needed(columns, rows, shown) > width:
        if not optional:
            return None
        shown.remove(optional.pop())
    return shown


def table(columns: Sequence[Column], rows: Sequence[Sequence[str]], indexes: list[int]) -> Table:
    t = Table(box=None, pad_edge=False, padding=(0, GAP // 2, 0, GAP - GAP // 2), header_style="bold")
    for i in indexes:
        c = columns[i]
        t.add_column(c.name, justify=c.justify, no_wrap=not c.wrap, overflow="fold" if c.wrap else "ellipsis")
    for r in rows:
        t.add_row(*(r[i] for i in indexes))
    return t


def print_records(
    console: Console, columns: Sequence[Column], rows: Sequence[Sequence[str]], title: str | None = None
) -> None:
    """Print records as a table that fits ``console.width`` (see the module docstring), under ``title``."""
    if title:
        console.print(title, style="bold", markup=False)
    if not rows:
        console.print("(none)", style="dim")
        return
    shown = fit(columns, rows, console.width)
    if shown is not None:
        console.print(table(columns, rows, shown))
        hidden = [c.name for i, c in enumerate(columns) if i not in shown]
        if hidden:
            where = f"{title}: " if title else ""
            err().print(f"({where}narrow terminal, not shown: {', '.join(hidden)}; see --json)", style="dim")
        return
    kept = [i for i, c in enumerate(columns) if c.keep]
    for r in rows:  # one block per record: the kept values on one line (never cut), the rest below
        console.print("  ".join(r[i] for i in kept), soft_wrap=True)
        for i, c in enumerate(columns):
            if i not in kept and Text.from_markup(r[i]).plain.strip():
                console.print(f"  {c.name}: {r[i]}")
