"""What a storage node's processes tell each other over core NATS, so that each one's memory stays true when
another one, or another component, changes an image.

Every process of a node (one, or ``node.workers`` sharing its port) keeps its own serve gate and metadata cache.

- **Deletes and rejections** (every process, even alone): the set's `deleted` and `rejected` events (JetStream
  publishes, which a core subscription sees too) mark the image gone in its serve gate and drop it from its
  cache: it answers 404 at once, before the replicator has removed the files (or, with ``replicator.enabled =
  false``, a stand-alone replicator), whatever they and the ready marker still say until then.

With several processes (worker 0 is the primary; ``storage_node.worker_reports.Role``):

- **Files removed, originals found damaged** by one process (an eviction, a corruption's variants, a scrub's
  finding): it announces the images (``FilesChanged``, batched) and the others forget what they remember of them,
  or mark the original damaged themselves (the damaged file's stamp taken here, so a repair is noticed).
- **Processing runs in the primary only** (its sweep claims uploads still `processing`, so two processors would
  process one image twice). A non-primary process that took an upload does not process it: the primary hears the
  set's `uploaded` event of its own node and submits it, or its sweep finds it (when the event was lost).
- **Reports**: every ``REPORT_S`` a non-primary process sends the primary its running totals
  (``storage_node.worker_reports``), and every ``flush_s`` it writes the read times it saw to the files' mtimes
  (``Store.flush_reads``), which the primary's tier policy reads (the reads it saw itself it knows).

Core NATS loses what is sent while disconnected: the next report makes good a lost one; a lost deletion leaves the
gate to ask Postgres again once the files are gone (as before); a lost ``FilesChanged`` leaves another process
believing in a variant that is gone until it forgets the image (its variant requests answer 404 meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from common import loops, reqlog
from common.bus import Bus
from common.config import Settings
from common.events import FilesChanged, ImageDeleted, ImageProcessed, ImageRejected, ImageUploaded, WorkerReport
from common.loops import cancel_all
from common.metrics import NodeMetrics
from storage_node.gate import ServeGate
from storage_node.heartbeat import NodeStatus
from storage_node.objects.store import Store
from storage_node.worker_reports import Reporter, ReportSum, Role

logger = logging.getLogger(__name__)
REPORT_S = 1.0
BATCH_S = 0.05  # changes announced together: an eviction pass removes thousands of variants
MAX_IDS = 1000  # image ids per FilesChanged message (about 40 KB, far under NATS's 1 MB)


class Siblings:
    def __init__(
        self,
        settings: Settings,
        role: Role,
        store: Store,
        gate: ServeGate,
        bus: Bus,
        metrics: NodeMetrics,
        status: NodeStatus,
        submit: Callable[[str], object],
    ) -> None:
        """``submit``: the primary's processor's (an upload taken by another process, to process)."""
        self.settings, self.role, self.store, self.gate, self.bus = settings, role, store, gate, bus
        self.submit = submit
        self.node_id = settings.node.node_id
        self.reporter = Reporter(role.worker, store, metrics, status)
        self.sum: ReportSum | None = None  # the primary's, once it counted the disk (``count_from``)
        self._subs: list[Subscription] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._sends: set[asyncio.Task[None]] = set()
        self._pending: dict[str, set[str]] = {}  # kind -> images to announce
        self._flush: asyncio.TimerHandle | None = None
        self._quiet: set[str] = set()  # images being marked from another process's news: not announced back
        self._loop: asyncio.AbstractEventLoop | None = None

    def count_from(self, counted_at: float, metrics: NodeMetrics, status: NodeStatus) -> None:
        """In the primary: it began counting the disk at ``counted_at`` (wall clock)."""
        self.sum = ReportSum(self.store, metrics, status, counted_at)

    async def start(self) -> None:
        """Subscribe (before the process serves: no event is missed after start-up) and start the reports."""
        subjects, nc, node = self.bus.subjects, self.bus.nc, self.settings.node
        self._loop = asyncio.get_running_loop()
        for name in (ImageDeleted.name, ImageRejected.name):
            self._subs.append(await nc.subscribe(subjects.set_event(node.set_id, name), cb=self._on_gone))
        if self.role.primary:  # notes `ready` on disk for the other processes (``ServeGate``)
            self._subs.append(await nc.subscribe(subjects.image_event(ImageProcessed.name), cb=self._on_processed))
        if self.role.alone:
            return
        self.store.on_change = self._on_change
        self._subs.append(await nc.subscribe(subjects.node_files_changed(self.node_id), cb=self._on_files_changed))
        if self.role.primary:
            self._subs.append(
                await nc.subscribe(subjects.set_event(node.set_id, ImageUploaded.name), cb=self._on_upload)
            )
            self._subs.append(await nc.subscribe(subjects.node_report(self.node_id), cb=self._on_report))
        else:
            tiers = self.settings.tiers
            flush_s = min(tiers.interval_s, tiers.idle_grace_s / 2)
            self._tasks = [
                asyncio.create_task(self._report_forever(), name="worker-report"),
                asyncio.create_task(self._flush_reads_forever(flush_s), name="worker-flush-reads"),
            ]

    async def stop(self) -> None:
        self.store.on_change = None
        if self._flush is not None:
            self._flush.cancel()
        await cancel_all([*self._tasks, *self._sends])
        for sub in self._subs:
            with contextlib.suppress(Exception):  # a connection already lost has no subscriptions left to end
                await sub.unsubscribe()
        self._subs, self._tasks = [], []

    # --- every process ---------------------------------------------------------------------------------
    async def _on_gone(self, msg: Msg) -> None:
        kind = ImageDeleted if msg.subject.endswith("." + ImageDeleted.name) else ImageRejected
        try:
            image_id = kind.from_json(msg.data).image_id
        except (ValueError, TypeError) as exc:
            logger.warning("bad %s event: %s", kind.name, exc)
            return
        self.store.published.unpublish(image_id)  # first, and on this loop: nginx in front stops before the node does
        self.gate.gone(image_id)
        self.store.forget(image_id)

    async def _on_processed(self, msg: Msg) -> None:
        """An image became `ready` (on its origin, or approved): a copy held here is servable without asking
        Postgres, which matters when it is down. Core NATS: a lost event leaves the gate to ask Postgres."""
        try:
            event = ImageProcessed.from_json(msg.data)
            held = event.status == "ready" and await asyncio.to_thread(self.store.tier_of, event.image_id) is not None
        except (ValueError, TypeError) as exc:  # (a malformed image id too)
            logger.warning("bad %s event: %s", ImageProcessed.name, exc)
            return
        if held:
            await self.gate.mark_ready(event.image_id)

    # --- several processes: files changed by one of them ---------------------------------------------
    def _on_change(self, image_id: str, kind: str) -> None:
        """``Store.on_change``: called from any thread."""
        if image_id in self._quiet or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._queue, image_id, kind)

    def _queue(self, image_id: str, kind: str) -> None:
        self._pending.setdefault(kind, set()).add(image_id)
        if self._flush is None and self._loop is not None:
            self._flush = self._loop.call_later(BATCH_S, self._announce)

    def _announce(self) -> None:
        self._flush = None
        pending, self._pending = self._pending, {}
        for kind, ids in pending.items():
            ordered = sorted(ids)
            for start in range(0, len(ordered), MAX_IDS):
                event = FilesChanged(os.getpid(), kind, ordered[start : start + MAX_IDS])
                # announce() never raises; a lost message is the case the docstring describes
                task = asyncio.create_task(self.bus.announce(self.bus.subjects.node_files_changed(self.node_id), event))
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)

    async def _on_files_changed(self, msg: Msg) -> None:
        try:
            event = FilesChanged.from_json(msg.data)
        except (ValueError, TypeError) as exc:
            logger.warning("bad %s message: %s", FilesChanged.name, exc)
            return
        if event.pid == os.getpid():
            return
        if event.kind != "corrupt":
            for image_id in event.image_ids:
                self.store.forget(image_id)
            return
        for image_id in event.image_ids:
            # The damaged file's stamp, taken now: a verified copy put in its place later has another one.
            stamp = await asyncio.to_thread(self.store.original_stamp, image_id)
            self._quiet.add(image_id)
            try:
                self.store.mark_corrupt(image_id, stamp)
            finally:
                self._quiet.discard(image_id)

    # --- several processes: the primary ---------------------------------------------------------------
    async def _on_upload(self, msg: Msg) -> None:
        try:
            event = ImageUploaded.from_json(msg.data)
        except (ValueError, TypeError):
            return  # the replicator's consumer reports malformed set events
        if event.origin_node == self.node_id:
            reqlog.adopt(msg.headers)  # the upload's request id, for the processing's log lines
            self.submit(event.image_id)  # once however often: the processor keeps one task per image

    async def _on_report(self, msg: Msg) -> None:
        if self.sum is None:
            return  # still counting the disk: the next report counts
        try:
            report = WorkerReport.from_json(msg.data)
        except (ValueError, TypeError) as exc:
            logger.warning("bad %s message: %s", WorkerReport.name, exc)
            return
        images = self.sum.apply(report)

        def recount() -> None:
            for image_id in images:
                self.store.recount_variant_bytes(image_id)

        if images:
            await asyncio.to_thread(recount)

    # --- several processes: the others ----------------------------------------------------------------
    async def _report_forever(self) -> None:
        subject = self.bus.subjects.node_report(self.node_id)
        while True:
            try:
                report = await asyncio.to_thread(self.reporter.report)
                await self.bus.announce(subject, report)
            except Exception as exc:  # never stop reporting; the next report carries the totals anyway
                loops.raise_if_cancelling()
                logger.warning("worker report failed: %r", exc)
            await loops.sleep(REPORT_S)

    async def _flush_reads_forever(self, every_s: float) -> None:
        while True:
            await loops.sleep(every_s)
            try:
                await asyncio.to_thread(self.store.flush_reads, 0.0)  # the marks themselves only the primary uses
                # Promotions count the primary's own reads of cold originals: drop this process's (bounded memory).
                self.store.cold_reads(since=float("inf"))
            except Exception as exc:
                loops.raise_if_cancelling()
                logger.warning("writing read times failed: %r", exc)
