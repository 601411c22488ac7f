"""Off-path processing of uploads on their origin node: ``uploaded -> processing -> ready | rejected``
(or ``quarantined`` when a moderation hook flags the image).

After the ``201`` the upload handler hands the image id to :class:`Processor`. The decode-heavy part
(full decode check, metadata, EXIF facts, perceptual hash, eager variants) runs in a sandboxed worker
process (``storage_node.sandbox``); this module commits the eager variant files, looks for
near-duplicates, asks the moderation hooks, and records the outcome in Postgres together with its callback
(delivered by ``common.callback_outbox``).
A rejected image's files are removed here and, through an ``ImageRejected`` event, on every other
member of its set. Postgres is the queue of record: a sweep re-claims uploads a crash left behind.
The worker decodes a copy of the original verified against the record: an original damaged since its
upload is not the image's fault, so it is reported (``storage_node.integrity``) and processed once a
verified copy replaces it, never rejected for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from functools import partial
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from common import loops
from common.bus import Bus
from common.callback_outbox import CallbackOutbox
from common.config import Settings
from common.db import pipeline as db_pipeline
from common.db.rows import Pool
from common.errors import InvalidImage, UnsupportedImage
from common.events import ImageProcessed, ImageRejected
from common.loops import cancel_all
from common.metrics import StageMetrics
from storage_node.burst import BurstGate
from storage_node.integrity import Integrity
from storage_node.moderation import Moderation
from storage_node.objects.store import Store
from storage_node.objects.verify import OriginalMismatch
from storage_node.render import RenderOptions
from storage_node.sandbox import SandboxPool

if TYPE_CHECKING:
    from common.metrics import NodeMetrics

logger = logging.getLogger(__name__)
MAX_ATTEMPTS = 3  # processing failures that are not the image's fault, before it is rejected anyway


class Processor:
    def __init__(self, settings: Settings, pool: Pool, store: Store, bus: Bus, callbacks: CallbackOutbox) -> None:
        self.settings = settings
        self.pool = pool
        self.store = store
        self.bus = bus
        self.callbacks = callbacks
        pipe = settings.pipeline
        self.sandbox = SandboxPool(
            pipe.workers, pipe.worker_memory_mb, pipe.job_timeout_s, pipe.worker_max_jobs, nice=pipe.nice
        )
        self.moderation = Moderation(settings.moderation)
        self.render = RenderOptions.from_settings(pipe)
        # Uploads past these wait here, unclaimed, rather than in the sandbox's queue: an upload's probe (a BMP's,
        # an ICO's) then waits behind a few jobs at most, never behind the whole backlog, and a burst's claims
        # are made as processing drains, not during the burst beside its 201s. Twice the workers: while some
        # jobs finish (variants stored, the row written), the next ones keep every worker busy.
        self._slots = asyncio.Semaphore(2 * self.sandbox.size)
        self.burst = BurstGate(pipe.burst_rate, pipe.burst_max_wait_s)
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._since: dict[str, float] = {}  # image -> time.monotonic() it was submitted, while in ``_inflight``
        self._failures: dict[str, int] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.processed = 0
        self.metrics: NodeMetrics | None = None  # set by the app: outcomes and durations for /metrics
        self.stages = StageMetrics(CollectorRegistry())  # the app's (``NodeMetrics.stages``) once set
        self.integrity: Integrity | None = None  # set by the app: what a damaged original is reported to

    @property
    def node_id(self) -> str:
        return self.settings.node.node_id

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="process-sweep")

    def submit(self, image_id: str, *, arrival: bool = True) -> asyncio.Task[None]:
        """Process ``image_id`` in the background (once, however often it is submitted). ``arrival``: a new
        upload (it counts towards a burst), not one a sweep found."""
        task = self._inflight.get(image_id)
        if task is None:
            if arrival:
                self.burst.arrived()
            task = asyncio.get_running_loop().create_task(self._run(image_id), name=f"process-{image_id}")
            self._inflight[image_id] = task
            self._since[image_id] = time.monotonic()
            task.add_done_callback(lambda _t: self._done(image_id))
        return task

    def _done(self, image_id: str) -> None:
        self._inflight.pop(image_id, None)
        self._since.pop(image_id, None)

    def backlog(self) -> tuple[int, float]:
        """Uploads submitted and not yet processed, and the oldest one's age in seconds (0 when none)."""
        oldest = next(iter(self._since.values()), None)  # (insertion order: the first is the oldest)
        return len(self._since), 0.0 if oldest is None else time.monotonic() - oldest

    async def _run(self, image_id: str) -> None:
        started = time.perf_counter()
        async with self.stages.awaited("process:burst_wait"):
            await self.burst.wait(self._since[image_id])
        try:
            async with self._slots:
                status = await self.process(image_id)
        except Exception:  # (cancellation is a BaseException: it passes through)
            status = "failed"
            failures = self._failures[image_id] = self._failures.get(image_id, 0) + 1
            logger.exception("processing %s failed (attempt %d)", image_id, failures)
        if status is not None and self.metrics is not None:
            self.metrics.observe_processing(status, time.perf_counter() - started)
        if status == "failed" and self._failures[image_id] >= MAX_ATTEMPTS:
            self._failures.pop(image_id, None)
            await self.reject(image_id, "processing failed repeatedly")

    async def process(self, image_id: str) -> str | None:
        """Run the state machine for one upload; returns the final status (None when not ours to process)."""
        started = time.perf_counter()
        stages = self.stages
        async with stages.awaited("process:claim"):
            row = await db_pipeline.claim(self.pool, image_id, self.node_id)
        if row is None:
            return None
        sha256, size = row["sha256"], row["bytes"]
        if sha256 is None or size is None:
            return None  # never: an upload is claimed only once its record is written (this narrows the types)
        if self.integrity is not None and await self.integrity.refused(image_id):
            return None  # processed by a later sweep, once a verified copy has replaced the damaged one
        eager = [
            (name, self.store.new_tmp_path().with_suffix("." + name.rsplit(".", 1)[-1]))
            for name in self.settings.pipeline.eager_variants
        ]
        limits = self.settings.limits
        job = {
            "path": str(self.store.original_path(image_id)),
            "sha256": sha256,  # the worker decodes only bytes that hash to the record
            "bytes": size,
            "max_pixels": limits.max_pixels,
            "max_frames": limits.max_frames,
            "keep_gps": self.settings.pipeline.keep_gps,
            "render": asdict(self.render),
            "eager": [[name, str(path)] for name, path in eager],
        }
        try:
            async with stages.awaited("process:sandbox"):
                result = await self.sandbox.run(job)
            for step, cpu_s in result.get("cpu_s", {}).items():  # the worker's own clock
                stages.add(f"sandbox:{step}", 0.0, float(cpu_s))
            for name, path in eager:
                await asyncio.to_thread(
                    stages.timed("process:store_variant", partial(self.store.commit, path, image_id, name))
                )
                self.store.note_variant(image_id, name)
        except (InvalidImage, UnsupportedImage) as exc:
            await self.reject(image_id, exc.message)
            logger.info("rejected %s: %s", image_id, exc.message)
            return "rejected"
        except OriginalMismatch as exc:
            if self.integrity is not None:
                await self.integrity.found(image_id, "variant", exc)
            logger.warning("processing %s deferred until its original here is repaired: %s", image_id, exc)
            return None
        finally:
            for _name, path in eager:
                if path.exists():  # (committed ones were moved into place)
                    await asyncio.to_thread(self.store.discard_tmp, path)
        return await self._finish(image_id, row, result, started)

    async def _finish(self, image_id: str, row: db_pipeline.ClaimRow, result: dict[str, Any], started: float) -> str:
        stages = self.stages
        async with stages.awaited("process:near_duplicate"):
            duplicate_of = row["duplicate_of"] or await db_pipeline.near_duplicate(
                self.pool,
                int(result["phash"]),
                self.settings.pipeline.near_duplicate_distance,
                row["owner_key_id"],
                image_id,
            )
        status, reason = "ready", None
        if self.moderation.enabled:
            verdict = await self.moderation.check(image_id, self.store.original_path(image_id), result["content_type"])
            if verdict.flagged:
                status, reason = "quarantined", verdict.reason
        async with stages.awaited("process:finish"):
            done = await db_pipeline.finish(
                self.pool,
                image_id,
                result,
                status=status,
                reason=reason,
                duplicate_of=duplicate_of,
                callback=bool(row["callback_url"]),
            )
        self._failures.pop(image_id, None)
        self.processed += 1
        logger.info("processed %s -> %s in %.3fs", image_id, status, time.perf_counter() - started)
        if done is not None and done["status"] == "ready":  # servable by every process here, Postgres up or not
            await asyncio.to_thread(self.store.mark_ready, image_id)
        if done is not None:  # the query services' lookups hand out URLs from this moment (core NATS)
            event = ImageProcessed(image_id, done["status"], done["width"], done["height"])
            await self.bus.announce(self.bus.subjects.image_event(ImageProcessed.name), event)
        if done is not None and done["callback_url"]:
            self.callbacks.wake()  # `finish` recorded the callback (of `ready`) with the outcome
        return status

    async def reject(self, image_id: str, reason: str) -> None:
        """`rejected` with ``reason``; its files leave this node now and every other member via the event."""
        row = await db_pipeline.reject(self.pool, image_id, reason)
        await asyncio.to_thread(self.store.remove_image, image_id)
        if row is None:
            return
        try:
            await self.bus.publish_set_event(row["set_id"], ImageRejected(image_id, row["set_id"], reason), image_id)
        except Exception as exc:  # members that copied it keep a file nobody is served; logged for the operator
            logger.warning("publish of rejection of %s failed: %s", image_id, exc)
        if row["callback_url"]:
            self.callbacks.wake()  # recorded by `reject` in its transaction

    async def sweep_once(self) -> int:
        """Claim this node's uploads that are not being processed here (after a crash or a lost task)."""
        ids = [i for i in await db_pipeline.unprocessed(self.pool, self.node_id) if i not in self._inflight]
        for image_id in ids:
            self.submit(image_id, arrival=False)
        return len(ids)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except Exception as exc:
                loops.raise_if_cancelling()
                logger.warning("processing sweep failed: %s", exc)
            await loops.sleep(self.settings.pipeline.sweep_interval_s)

    async def wait_idle(self) -> None:
        """Tests and benchmarks: wait until nothing is being processed."""
        while self._inflight:
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    async def close(self) -> None:
        self.burst.stop()
        await cancel_all([self._sweeper, *self._inflight.values()])
        await self.sandbox.close()
        await self.moderation.close()
