"""A node's non-primary processes report running totals to the primary (``storage_node.worker_reports``): two real
stores on one data directory, one the primary's (which counted the disk), one a worker's (which never does)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from common.events import WorkerReport
from common.ids import new_image_id
from common.metrics import HttpMetrics, NodeMetrics
from storage_node.heartbeat import NodeStatus
from storage_node.objects.store import HOT, ObjectMeta, Store
from storage_node.worker_reports import STALE_S, Reporter, ReportSum


def _metrics() -> NodeMetrics:
    return NodeMetrics(HttpMetrics("storage-node"), "n1", "eu-west", "set-1")


def _store_original(store: Store, data: bytes) -> str:
    image_id = new_image_id()
    tmp = store.new_tmp_path()
    tmp.write_bytes(data)
    store.commit_original(tmp, image_id, ObjectMeta(hashlib.sha256(data).hexdigest(), "image/jpeg", len(data)))
    return image_id


def _store_variant(store: Store, image_id: str, name: str, size: int) -> None:
    tmp = store.new_tmp_path()
    tmp.write_bytes(b"v" * size)
    store.commit(tmp, image_id, name)


class _Node:
    """The primary's store and sum, and one worker's store and reporter, on one directory."""

    def __init__(self, root: Path, served_first: bool = False) -> None:
        self.metrics, self.status = _metrics(), NodeStatus()
        self.worker_metrics, self.worker_status = _metrics(), NodeStatus()
        self.primary = Store(root)
        # The worker's process starts first either way (they start together); it may also serve first.
        self.worker = Store(root)
        self.reporter = Reporter(1, self.worker, self.worker_metrics, self.worker_status)
        if served_first:
            self.reporter.serving()
        time.sleep(0.01)
        counted_at = time.time()
        self.primary.prepare()
        if not served_first:
            self.reporter.serving()
        self.sum = ReportSum(self.primary, self.metrics, self.status, counted_at)

    def deliver(self, report: WorkerReport, now: float | None = None) -> None:
        for image_id in self.sum.apply(report, now):
            self.primary.recount_variant_bytes(image_id)


def test_what_a_worker_stores_and_serves_is_counted_once_by_the_primary(tmp_path: Path) -> None:
    node = _Node(tmp_path)
    own = _store_original(node.primary, b"p" * 3000)
    before = node.primary.usage()

    image_id = _store_original(node.worker, b"w" * 5000)
    _store_variant(node.worker, image_id, "w300.jpg", 700)
    _store_variant(node.worker, own, "thumb.jpg", 300)  # a variant of the primary's image, built by the worker
    node.worker_metrics.http.requests_seen, node.worker_metrics.http.bytes_sent = 40, 90_000
    node.worker_metrics.uploads_ok = 1
    node.worker_status.in_flight = 3
    report = node.reporter.report()
    assert sorted(report.variants_changed) == sorted([image_id, own])
    node.deliver(report)
    node.deliver(report)  # the same report again (running totals): counted once

    after = node.primary.usage()
    sidecars = sum(len((node.primary.image_dir(i) / "meta.json").read_bytes()) for i in (image_id,))
    assert after.used_bytes - before.used_bytes == 5000 + sidecars + 700 + 300
    assert after.objects == before.objects + 1
    assert after.variant_bytes == before.variant_bytes + 1000
    assert node.primary.take_variant_bytes() == {image_id: 700, own: 300}  # for the primary's report to Postgres
    assert (node.metrics.http.requests_seen, node.metrics.http.bytes_sent, node.metrics.uploads_ok) == (40, 90_000, 1)
    assert node.status.others_in_flight == 3

    # The worker removes what it built: the primary's figures follow.
    node.worker.remove_variants(image_id)
    node.deliver(node.reporter.report())
    assert node.primary.usage().variant_bytes == before.variant_bytes + 300
    assert node.primary.usage().used_bytes == after.used_bytes - 700


def test_a_lost_report_is_made_good_by_the_next(tmp_path: Path) -> None:
    node = _Node(tmp_path)
    base = node.primary.usage().used_bytes
    _store_original(node.worker, b"a" * 1000)
    node.worker_metrics.http.requests_seen = 5
    node.reporter.report()  # lost on the way
    _store_original(node.worker, b"b" * 2000)
    node.worker_metrics.http.requests_seen = 9
    node.deliver(node.reporter.report())
    assert node.primary.usage().objects == 2
    assert node.primary.usage().used_bytes - base == node.worker.usage().used_bytes  # all the worker stored
    assert node.metrics.http.requests_seen == 9


def test_a_first_report_that_comes_late_is_counted_in_full(tmp_path: Path) -> None:
    """The worker's early reports were lost (the primary was still counting, or not yet subscribed): what it stored
    since it began serving, after the primary counted, is in its first report to arrive, and counted."""
    node = _Node(tmp_path)
    node.reporter.report()  # lost
    _store_original(node.worker, b"d" * 2500)
    node.worker_metrics.uploads_ok = 1
    node.deliver(node.reporter.report())
    assert node.primary.usage().objects == 1 and node.metrics.uploads_ok == 1


def test_a_worker_that_served_before_the_primary_counted_is_a_baseline_first(tmp_path: Path) -> None:
    node = _Node(tmp_path, served_first=True)
    counted = node.primary.usage()
    node.worker_metrics.http.requests_seen = 100  # served before this primary started: not this primary's to count
    node.deliver(node.reporter.report())
    assert node.primary.usage().used_bytes == counted.used_bytes and node.metrics.http.requests_seen == 0
    _store_original(node.worker, b"c" * 4000)
    node.worker_metrics.http.requests_seen = 101
    node.deliver(node.reporter.report())
    assert node.primary.usage().objects == counted.objects + 1
    assert node.metrics.http.requests_seen == 1


def test_a_restarted_worker_adds_from_zero_and_a_silent_one_has_nothing_in_flight(tmp_path: Path) -> None:
    node = _Node(tmp_path)
    first = node.reporter.report()
    node.deliver(WorkerReport(1, 1001, first.started_at, {HOT: 500}, {HOT: 1}, [], 10, 0, 0, 2), now=100.0)
    # Worker 1 again, a new process (pid): the earlier one's counts stay, the new one's add.
    node.deliver(WorkerReport(1, 1002, time.time(), {HOT: 200}, {HOT: 1}, [], 4, 0, 0, 1), now=101.0)
    assert node.primary.usage().objects == 2 and node.metrics.http.requests_seen == 14
    assert node.status.others_in_flight == 1  # only the live process's
    node.deliver(WorkerReport(2, 2001, time.time(), {}, {}, [], 0, 0, 0, 5), now=101.0 + STALE_S + 1)
    assert node.status.others_in_flight == 5  # worker 1 not heard from since: its figure no longer counts
