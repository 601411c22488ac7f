"""The invariants the fault suite asserts after each fault, and the figures it prints.

- **readable**: every acknowledged image is served with the hash recorded when it was sent, to a client in
  every region (the query service's URL, then the node, following 307s);
- **converged**: every acknowledged image is `ready` with an `ok` replica in every region within a stated
  bound after the fault ends (read from Postgres directly);
- **refused**: an upload the cluster refused (at its PUT, or rejected by processing) is never served, by the
  query service or by any node;
- **disk = database**: the file of every `ok` replica exists and hashes to the recorded SHA-256 (Postgres read
  directly, the nodes' data directories read from disk);
- **no failing URL once detected**: no URL the query service handed out after the fault was detected fails,
  and none ever carries wrong bytes (a 200 whose body does not hash to the recorded value).

Every problem names its invariant and the image; a test collects them and fails with the list.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.faults.load import REGIONS, Load, Lookup, Upload, fetch
from tests.faults.rig import Rig

URL_GRACE_S = 0.25  # a lookup answered this soon after detection was decided before it (requests in flight)


@dataclass
class Figures:
    """One fault's figures: the error rate while it lasted, the detection time and the convergence time."""

    fault: str
    detection_what: str  # what "detected" means for this fault ("": no fault, nothing to detect)
    t_fault: float
    t_detect: float | None = None
    t_end: float | None = None  # the fault is over (process back and serving, SIGCONT sent, copy repaired)
    t_converged: float | None = None
    uploads: int = 0
    uploads_failed: int = 0
    lookups: int = 0
    lookups_failed: int = 0
    url_failures_after_detection: int = 0
    why: str = ""  # the commonest reasons of the failures counted above
    probed: int = 0  # probe reads from every region between detection and the fault's end (Load.probe)
    sweep_reads: int = 0  # reads of the readability check after convergence (every image, every region)
    sweep_retried: int = 0  # ... that failed once and were tried again a second later
    sweep_why: str = ""  # why those failed
    problems: list[str] = field(default_factory=list)

    @property
    def detection_s(self) -> float | None:
        if self.t_detect is None or not self.detection_what:  # no fault, nothing to detect
            return None
        return self.t_detect - self.t_fault

    @property
    def window_s(self) -> float | None:
        return None if self.t_end is None else self.t_end - self.t_fault

    @property
    def convergence_s(self) -> float | None:
        if self.t_converged is None or self.t_end is None:
            return None
        return max(0.0, self.t_converged - self.t_end)

    def line(self) -> str:
        detected = f"detected after {_s(self.detection_s)} ({self.detection_what}); " if self.detection_what else ""
        return (
            f"FAULT {self.fault}: {self.uploads_failed}/{self.uploads} uploads and "
            f"{self.lookups_failed}/{self.lookups} lookups failed while it lasted ({_s(self.window_s)}); {detected}"
            f"converged {_s(self.convergence_s)} after it ended; "
            f"{self.url_failures_after_detection} URL(s) failed after detection ({self.probed} probe reads meanwhile); "
            f"{len(self.problems)} problem(s)"
            + (f"; failures: {self.why}" if self.why else "")
            + f"; readability check: {self.sweep_reads} reads, {self.sweep_retried} retried"
            + (f" ({self.sweep_why})" if self.sweep_why else "")
        )


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _rate(failed: int, total: int) -> str:
    return f"{failed}/{total}" + (f" ({100 * failed / total:.0f}%)" if total else "")


def table(rows: list[Figures]) -> str:
    head = (
        "fault",
        "lasted",
        "uploads failed",
        "lookups failed",
        "detection",
        "convergence",
        "bad URLs (probes)",
        "reads retried",
        "problems",
    )
    body = [
        (
            f.fault,
            _s(f.window_s),
            _rate(f.uploads_failed, f.uploads),
            _rate(f.lookups_failed, f.lookups),
            _s(f.detection_s),
            _s(f.convergence_s),
            f"{f.url_failures_after_detection} ({f.probed})",
            f"{f.sweep_retried}/{f.sweep_reads}",
            str(len(f.problems)),
        )
        for f in rows
    ]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [
        f"- {f.fault}: detection = {f.detection_what}"
        + (f"; failures: {f.why}" if f.why else "")
        + (f"; reads retried: {f.sweep_why}" if f.sweep_why else "")
        for f in rows
        if f.detection_what
    ]
    legend = [
        "lasted: from the fault to its end (process back and serving, SIGCONT, copy repaired, uploads taken again);",
        "failed: the load's uploads and lookups started meanwhile; detection: from the fault; convergence: from its",
        "end until every acknowledged image is `ready` and `ok` in every region; bad URLs: URLs handed out after",
        "detection that failed (probes: extra reads from every region between detection and the end); reads",
        "retried: reads of the check after convergence (every image, every region) that failed once, then retried.",
    ]
    broken = [f"- {f.fault}: {p}" for f in rows for p in f.problems[:10]]
    return "\n".join(lines + ["", *legend, "", *notes] + (["", "problems:", *broken] if broken else []))


class Checker:
    def __init__(self, rig: Rig, load: Load) -> None:
        self.rig, self.load = rig, load
        self.quiet_since = time.monotonic()  # the end of the last fault's checks: nothing should fail after it

    # --- the load's own records ----------------------------------------------------------------------------
    def acked(self, before: float | None = None) -> list[Upload]:
        """Good uploads answered 201 (by ``before``, monotonic)."""
        with self.load.lock:
            return [u for u in self.load.uploads if u.good and u.acked and (before is None or u.t_end <= before)]

    def refused(self) -> list[Upload]:
        """Uploads the cluster must never serve: refused at the PUT, or bad bytes it took (processing rejects
        them). Failed ones (a timeout, a reset: the outcome is unknown) are not among them."""
        with self.load.lock:
            return [
                u
                for u in self.load.uploads
                if u.image_id is not None and (u.outcome == "refused" or (u.outcome == "acked" and not u.good))
            ]

    def tally(self, fig: Figures, since: float, until: float) -> None:
        """The load's error rate between two instants, into ``fig``."""
        with self.load.lock:
            ups = [u for u in self.load.uploads if u.good and since <= u.t_start < until and u.outcome != "in_flight"]
            looks = [
                x for x in self.load.lookups if since <= x.t_start < until and x.outcome != "in_flight" and not x.probe
            ]
        fig.uploads, fig.uploads_failed = len(ups), sum(not u.acked for u in ups)
        fig.lookups, fig.lookups_failed = len(looks), sum(x.outcome != "ok" for x in looks)
        reasons = Counter(f"upload {_reason(u.detail)}" for u in ups if not u.acked)
        reasons.update(f"{x.outcome} {_reason(x.detail)}" for x in looks if x.outcome != "ok")
        fig.why = ", ".join(f"{n}x {what}" for what, n in reasons.most_common(4))

    def bad_urls(self, since: float, until: float) -> list[Lookup]:
        """Lookups answered with a URL in [since, until) that then failed."""
        with self.load.lock:
            return [x for x in self.load.lookups if x.outcome == "url_failed" and since <= x.t_url < until]

    def quiet_problems(self, until: float) -> list[str]:
        """No fault is on between the last fault's checks and ``until``: no upload, lookup or URL may fail."""
        with self.load.lock:
            ups = [u for u in self.load.uploads if u.good and self.quiet_since <= u.t_start < until]
            looks = [x for x in self.load.lookups if self.quiet_since <= x.t_start < until]
        return grouped(
            [
                (f"no failure with no fault on: upload {u.seq} of a {u.region} client ({u.outcome})", u.detail)
                for u in ups
                if u.outcome in ("failed", "refused")
            ]
            + [
                (f"no failure with no fault on: {x.image_id} ({x.kind}) for a {x.region} client", x.detail)
                for x in looks
                if x.outcome not in ("ok", "in_flight")
            ]
        )

    def always_problems(self, since: float) -> list[str]:
        """Never, fault or not: a 200 with wrong bytes (lookups since ``since``), or the load itself failing."""
        with self.load.lock:
            wrong = [x for x in self.load.lookups if x.outcome == "wrong_bytes" and x.t_start >= since]
        problems = grouped(
            (f"never wrong bytes: {x.image_id} ({x.kind}) for a {x.region} client on {x.node_id}", x.detail)
            for x in wrong
        )
        if self.load.crashed is not None:
            problems.append(f"the load generator crashed: {self.load.crashed!r}")
        return problems

    # --- Postgres and the disks ----------------------------------------------------------------------------
    def unconverged(self, ups: list[Upload]) -> dict[str, str]:
        """image id -> what it still lacks (not `ready`, or no `ok` replica in some region)."""
        ids = [u.image_id for u in ups if u.image_id is not None]
        rows = self.rig.sql(
            "SELECT i.image_id, i.status, n.region, r.state FROM images i "
            "LEFT JOIN replicas r ON r.image_id = i.image_id LEFT JOIN nodes n ON n.node_id = r.node_id "
            "WHERE i.image_id = ANY(%s)",
            (ids,),
        )
        status: dict[str, str] = {}
        ok_regions: dict[str, set[str]] = {i: set() for i in ids}
        states: dict[str, list[str]] = {i: [] for i in ids}
        for image_id, image_status, region, state in rows:
            status[image_id] = image_status
            if region is not None:
                states[image_id].append(f"{region}:{state}")
                if state == "ok":
                    ok_regions[image_id].add(region)
        lacking = {}
        for image_id in ids:
            missing_regions = sorted(set(REGIONS) - ok_regions[image_id])
            if status.get(image_id) != "ready" or missing_regions:
                lacking[image_id] = (
                    f"status {status.get(image_id, 'no row')}, replicas {sorted(states[image_id])}, "
                    f"no ok replica in {missing_regions}"
                )
        return lacking

    def wait_converged(self, fig: Figures, bound_s: float) -> list[str]:
        """Until every image acknowledged by now is `ready` and `ok` in every region; problems after the bound."""
        ups = self.acked(before=time.monotonic())
        deadline = time.monotonic() + bound_s
        lacking: dict[str, str] = {}
        while time.monotonic() < deadline:
            try:
                lacking = self.unconverged(ups)
            except Exception as exc:  # Postgres still coming back: keep waiting within the bound
                lacking = {"(database)": f"not readable: {exc!r}"}
            if not lacking:
                fig.t_converged = time.monotonic()
                return []
            time.sleep(0.25)
        shown = list(lacking.items())[:10]
        return [
            f"converged within {bound_s:g}s after {fig.fault} ended: {image_id} {what}" for image_id, what in shown
        ] + ([f"... and {len(lacking) - 10} more"] if len(lacking) > 10 else [])

    def disk_problems(self) -> list[str]:
        """Every `ok` replica of a servable image (`ready`, `quarantined`: an image still being processed may yet
        be rejected and its files removed) has its file on its node's disk, hashing to the recorded SHA-256. A
        mismatch counts only if the row still says so once the file was read (Postgres first, then the disk:
        a copy that changed in between is looked at again, not blamed)."""
        query = (
            "SELECT r.image_id, r.node_id, i.sha256 FROM replicas r JOIN images i USING (image_id) "
            "WHERE r.state = 'ok' AND i.status IN ('ready', 'quarantined')"
        )
        suspects = []
        for image_id, node_id, want in self.rig.sql(query):
            path = self.rig.original_path(node_id, image_id)
            got = _sha256_file(path)
            if got != want:
                suspects.append((image_id, node_id, want, path))
        if not suspects:
            return []
        still = set(self.rig.sql(query + " AND r.image_id = ANY(%s)", ([s[0] for s in suspects],)))
        problems = []
        for image_id, node_id, want, path in suspects:
            got = _sha256_file(path)
            if (image_id, node_id, want) not in still or got == want:
                continue
            what = "does not exist" if got is None else f"hashes to {got[:12]}, recorded {want[:12]}"
            problems.append(f"disk = database: {image_id} is `ok` on {node_id} but {path} {what}")
        return problems

    # --- reads through the cluster -------------------------------------------------------------------------
    def readable_problems(self, fig: Figures, ups: list[Upload]) -> list[str]:
        """Every image in ``ups``, from a client in every region, served with its recorded hash. A read that
        failed (a 503 with Retry-After, a reset) is tried once more a second later, as a client would; how many
        needed that goes into the figures. Wrong bytes are never retried."""
        by_id = {u.image_id: u for u in ups}

        async def sweep(pairs: list[tuple[Upload, str]]) -> list[Lookup]:
            sem = asyncio.Semaphore(12)

            async def one(up: Upload, region: str) -> Lookup:
                async with sem:
                    return await self.load.lookup(up, region, "original", record=False)

            return list(await asyncio.gather(*(one(u, r) for u, r in pairs)))

        looks = self.load.run(sweep([(u, r) for u in ups for r in REGIONS]), timeout_s=300)
        failed = [x for x in looks if x.outcome in ("lookup_failed", "url_failed")]
        again = [(by_id[x.image_id], x.region) for x in failed]
        fig.sweep_reads, fig.sweep_retried = len(looks), len(again)
        reasons = Counter(f"{x.outcome} {_reason(x.detail)} ({x.node_id or 'no node'})" for x in failed)
        fig.sweep_why = ", ".join(f"{n}x {what}" for what, n in reasons.most_common(3))
        if again:
            time.sleep(1.0)
            looks = [x for x in looks if x.outcome not in ("lookup_failed", "url_failed")]
            looks += self.load.run(sweep(again), timeout_s=300)
        return grouped(
            (f"readable from every region: {x.image_id} for a {x.region} client ({x.outcome})", x.detail)
            for x in looks
            if x.outcome != "ok"
        )

    def refused_problems(self) -> list[str]:
        """No refused upload is served: the query service gives no URL, no node answers 200 for it."""
        refused = self.refused()
        nodes = self.rig.nodes()

        async def sweep() -> list[str]:
            assert self.load.session is not None
            session, problems = self.load.session, []
            for up in refused:
                url = f"{self.load.query_url}/v1/images/{up.image_id}/url"
                async with session.get(url, params={"w": "150"}, headers=self.load.auth) as resp:
                    if resp.status == 200:
                        problems.append(f"refused never served: {up.image_id} ({up.detail or 'bad bytes'}) got a URL")
                for node_id, base in nodes.items():
                    got = await fetch(session, f"{base}/i/{up.image_id}/w150.jpg")
                    if got.status == 200:
                        problems.append(
                            f"refused never served: {up.image_id} ({up.detail or 'bad bytes'}) served by {node_id} "
                            f"(asked {base}, answered by {got.url})"
                        )
            return problems

        return self.load.run(sweep(), timeout_s=120)

    # --- one fault, start to end ---------------------------------------------------------------------------
    def conclude(self, fig: Figures, converge_bound_s: float) -> Figures:
        """After the fault ended: wait for convergence, then check every invariant; the figures, with the
        problems found. The error rate is the load's between the fault and its end (or now, if it never ended)."""
        end = fig.t_end if fig.t_end is not None else time.monotonic()
        fig.problems += self.wait_converged(fig, converge_bound_s)
        self.tally(fig, fig.t_fault, end)
        if fig.t_detect is not None:
            detected = fig.t_detect
            late = self.bad_urls(detected + URL_GRACE_S, time.monotonic())
            fig.url_failures_after_detection = len(late)
            fig.problems += grouped(
                (
                    f"no failing URL once detected: {x.image_id} ({x.kind}) for a {x.region} client on {x.node_id}",
                    f"handed out {x.t_url - detected:.2f}s after {fig.fault} was detected: {x.detail}",
                )
                for x in late
            )
        fig.problems += self.disk_problems()
        fig.problems += self.readable_problems(fig, self.acked(before=fig.t_converged or time.monotonic()))
        fig.problems += self.refused_problems()
        fig.problems += self.always_problems(self.quiet_since)
        self.quiet_since = time.monotonic()
        return fig


def grouped(found: Iterable[tuple[str, str]]) -> list[str]:
    """One line per problem (what broke, for which image and client), with the first detail and a count."""
    first: dict[str, str] = {}
    count: Counter[str] = Counter()
    for what, detail in found:
        first.setdefault(what, detail)
        count[what] += 1
    return [f"{what}: {first[what]}" + (f" ({count[what]} times)" if count[what] > 1 else "") for what in first]


def _reason(detail: str) -> str:
    """A failure's kind without its particulars: `url 503 no_replica`, `PUT 201`, `0 ClientConnectorError`."""
    return " ".join(detail.split(" from ")[0].split(":")[0].split()[:3])


def _sha256_file(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None
