"""The running totals a node's non-primary processes report to its primary (``node.workers``), and the primary's
sum of them, so that the usage it reports (heartbeat, ``/stats``, tier manager) and its heartbeat's rates cover
the whole node, not the one process.

A report carries totals since the process began counting (``WorkerReport``), never increments: a lost report is
made good by the next, and the primary applies the difference from the last one it applied of that process. A
non-primary process never counts the disk (``Store.prepare`` runs in the primary only), so its store's figures are
exactly what it stored minus what it removed. The primary counts the disk once, at its start, and the other
processes start only once it serves (``minicdn.workers``), so each is counted from zero however late its first
report comes. Only a primary restarted alone (a crash) counts while others serve: a process that began serving
before that has its first report taken as the baseline (what it had stored is on the disk counted), and what it
stores while the primary counts may be missed or counted twice until the next start of the node counts afresh.

Pure bookkeeping, no NATS (``storage_node.siblings`` sends and receives): testable with a real store alone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from common.events import WorkerReport
from common.metrics import NodeMetrics
from storage_node.heartbeat import NodeStatus
from storage_node.objects.store import Store

STALE_S = 5.0  # a process not heard from for this long counts no requests in flight (it died or is cut off)


@dataclass(frozen=True)
class Role:
    """Which of its node's processes this one is: worker 0 is the primary, the only one running the background
    duties (heartbeats, replicator, processing, scrubber, tier manager)."""

    worker: int = 0
    workers: int = 1

    @property
    def primary(self) -> bool:
        return self.worker == 0

    @property
    def alone(self) -> bool:
        return self.workers <= 1


class Reporter:
    """In a non-primary process: its totals, as the report it sends."""

    def __init__(self, worker: int, store: Store, metrics: NodeMetrics, status: NodeStatus) -> None:
        self.worker, self.store, self.metrics, self.status = worker, store, metrics, status
        # When it began accepting requests (``serving``): it stores nothing before, so what it reports is counted in
        # full unless it served before the primary counted the disk. 0.0: not yet.
        self.started_at = 0.0

    def serving(self) -> None:
        """Called as the process begins accepting requests."""
        self.started_at = time.time()

    def report(self) -> WorkerReport:
        """Blocking (the usage's statvfs)."""
        usage = self.store.usage()
        return WorkerReport(
            worker=self.worker,
            pid=os.getpid(),
            started_at=self.started_at,
            used_bytes={tier: t.used_bytes for tier, t in usage.tiers.items()},
            originals={tier: t.originals for tier, t in usage.tiers.items()},
            variants_changed=sorted(self.store.take_variant_bytes()),
            requests=self.metrics.http.requests_seen,
            bytes_sent=self.metrics.http.bytes_sent,
            uploads=self.metrics.uploads_ok,
            in_flight=self.status.in_flight,
        )


class ReportSum:
    """In the primary: applies the reports to its own store, metrics and status. ``counted_at``: when the primary
    began counting the disk."""

    def __init__(self, store: Store, metrics: NodeMetrics, status: NodeStatus, counted_at: float) -> None:
        self.store, self.metrics, self.status = store, metrics, status
        self.counted_at = counted_at
        self._last: dict[int, tuple[WorkerReport, float]] = {}  # pid -> the last report applied, when it came

    def apply(self, report: WorkerReport, now: float | None = None) -> list[str]:
        """Count what ``report`` adds; returns the images whose variant bytes to read again from the disk
        (``Store.recount_variant_bytes``, blocking: the caller runs it off the event loop)."""
        now = time.monotonic() if now is None else now
        seen = self._last.get(report.pid)
        if seen is None and 0.0 < report.started_at < self.counted_at:
            base = report  # it served before the primary counted: the disk counted holds what it had stored
        else:
            base = seen[0] if seen is not None else _zero(report)
        for tier in report.used_bytes.keys() | report.originals.keys():
            self.store.add_usage(
                tier,
                report.used_bytes.get(tier, 0) - base.used_bytes.get(tier, 0),
                report.originals.get(tier, 0) - base.originals.get(tier, 0),
            )
        http = self.metrics.http
        http.requests_seen += report.requests - base.requests
        http.bytes_sent += report.bytes_sent - base.bytes_sent
        self.metrics.uploads_ok += report.uploads - base.uploads
        # The same worker under another pid: the earlier process is gone (what it counted stays counted).
        for pid in [p for p, (r, _at) in self._last.items() if r.worker == report.worker and p != report.pid]:
            del self._last[pid]
        self._last[report.pid] = (report, now)
        self.status.others_in_flight = sum(r.in_flight for r, at in self._last.values() if now - at < STALE_S)
        return list(report.variants_changed)


def _zero(report: WorkerReport) -> WorkerReport:
    return WorkerReport(report.worker, report.pid, report.started_at, {}, {}, [], 0, 0, 0, 0)
