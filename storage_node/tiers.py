"""A node's tier manager, in its background tasks: flushes read times to disk, evicts variants under disk
pressure, moves idle originals to the cold tier and promotes re-read ones back (policy: ``tier_policy``),
and reports each image's variant bytes to Postgres. Bounded per pass (files) and in bytes per second
(copies), so it never starves serving; the serving path only records reads in memory."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from common import loops
from common.config import TiersSettings
from common.metrics import NodeMetrics
from storage_node import tier_policy
from storage_node.objects.store import COLD, HOT, ORIGINAL, CopyMismatch, SidecarLost, Store, StoredFile

logger = logging.getLogger(__name__)
ReportVariantBytes = Callable[[dict[str, int]], Awaitable[None]]
REPORT_BATCH = 5000


@dataclass
class PassResult:
    flushed: int = 0
    evicted: int = 0
    evicted_bytes: int = 0
    to_cold: int = 0
    to_cold_bytes: int = 0
    to_hot: int = 0
    to_hot_bytes: int = 0
    refused: int = 0
    seconds: float = 0.0


class _Pace:
    """Sleeps so that copies average at most ``bytes_per_s`` (0: no limit)."""

    def __init__(self, bytes_per_s: int) -> None:
        self.bytes_per_s = bytes_per_s
        self._next = 0.0

    async def take(self, n: int) -> None:
        if self.bytes_per_s <= 0:
            return
        now = time.monotonic()
        start = max(self._next, now)
        self._next = start + n / self.bytes_per_s
        if start > now:
            await asyncio.sleep(start - now)


class TierManager:
    def __init__(
        self,
        store: Store,
        settings: TiersSettings,
        metrics: NodeMetrics | None = None,
        report: ReportVariantBytes | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.report = report
        self.pace = _Pace(settings.move_bytes_per_s)
        self.passes = 0
        self._running = asyncio.Lock()  # a pass started by hand (tests, operators) never overlaps the loop's

    async def run_forever(self) -> None:
        while True:
            try:
                result = await self.run_pass()
                if result.evicted or result.to_cold or result.to_hot or result.refused:
                    logger.info(
                        "tier pass: evicted %d variants (%d bytes), %d originals to cold (%d bytes), "
                        "%d back to hot (%d bytes), %d refused, in %.2fs",
                        result.evicted,
                        result.evicted_bytes,
                        result.to_cold,
                        result.to_cold_bytes,
                        result.to_hot,
                        result.to_hot_bytes,
                        result.refused,
                        result.seconds,
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                loops.raise_if_cancelling()
                logger.warning("tier pass failed: %r", exc)
            await loops.sleep(self.settings.interval_s)

    async def run_pass(self, now: float | None = None) -> PassResult:
        async with self._running:
            return await self._pass(time.time() if now is None else now)

    async def _pass(self, now: float) -> PassResult:
        started = time.perf_counter()
        cfg, store = self.settings, self.store
        result = PassResult()
        keep_marks = max(cfg.idle_grace_s, cfg.interval_s * 2)
        result.flushed = await asyncio.to_thread(store.flush_reads, keep_marks)
        hot_files = await asyncio.to_thread(lambda: list(store.scan(HOT)))
        usage = await asyncio.to_thread(store.usage)
        to_free = tier_policy.bytes_to_free(usage.tiers[HOT], cfg.hot_high_water, cfg.hot_low_water)
        if to_free:
            await self._evict(hot_files, to_free, now, result)
        if store.tiered:
            if not to_free:  # under pressure, nothing comes back to the hot tier
                await self._promote(now, result)
            await self._to_cold(hot_files, now, usage.tiers[COLD].free_bytes, result)
        await self._report()
        await self._export()
        self.passes += 1
        result.seconds = time.perf_counter() - started
        return result

    async def _evict(self, files: list[StoredFile], to_free: int, now: float, result: PassResult) -> None:
        cfg = self.settings
        plan = tier_policy.eviction_plan(files, to_free, now, cfg.idle_grace_s, cfg.max_evictions_per_pass)

        def evict_all() -> tuple[int, int]:
            count = freed = 0
            for f in plan:
                got = self.store.evict_variant(f.image_id, f.name, cfg.idle_grace_s, time.time())
                count += got > 0
                freed += got
            return count, freed

        result.evicted, result.evicted_bytes = await asyncio.to_thread(evict_all)
        if self.metrics is not None:
            self.metrics.tiers.evictions.inc(result.evicted)
            self.metrics.tiers.evicted_bytes.inc(result.evicted_bytes)

    async def _to_cold(self, files: list[StoredFile], now: float, cold_free: int, result: PassResult) -> None:
        cfg = self.settings
        chosen = tier_policy.cold_candidates(
            files, now, cfg.cold_after_days, cfg.idle_grace_s, cfg.max_moves_per_pass - result.to_hot
        )
        moved = []
        for f in chosen:
            if f.bytes > cold_free:
                break  # the cold tier is full: originals stay hot (still served, nothing lost)
            if time.time() - self.store.last_read(f.image_id, ORIGINAL) < cfg.idle_grace_s:
                continue  # read since the scan: a reader may be about to open the hot copy
            got = await self._switch(f.image_id, COLD, f.bytes, result)
            cold_free -= got
            if got:
                moved.append(f.image_id)
                result.to_cold += 1
                result.to_cold_bytes += got
        await self._drop_old(moved, COLD)

    async def _promote(self, now: float, result: PassResult) -> None:
        cfg = self.settings
        reads = self.store.cold_reads(since=now - cfg.promote_window_s)
        moved = []
        for image_id in tier_policy.promotions(reads, cfg.promote_reads, cfg.max_moves_per_pass):
            got = await self._switch(image_id, HOT, 0, result)
            if got:
                moved.append(image_id)
                result.to_hot += 1
                result.to_hot_bytes += got
        await self._drop_old(moved, HOT)

    async def _switch(self, image_id: str, to: str, size: int, result: PassResult) -> int:
        try:
            meta = await asyncio.to_thread(self.store.meta, image_id)
        except SidecarLost:
            return 0  # not before its sidecar is restored from the record (its next read, or the scrubber)
        if meta is None:
            return 0
        await self.pace.take(size or meta.bytes)
        try:
            got = await asyncio.to_thread(self.store.switch_tier, image_id, to, meta.sha256)
        except (CopyMismatch, OSError) as exc:  # bad bytes (for the scrubber to repair) or a full disk stay put
            logger.error("tier move of %s refused: %r", image_id, exc)
            result.refused += 1
            if self.metrics is not None:
                self.metrics.tiers.move_failures.inc()
            return 0
        if got and self.metrics is not None:
            self.metrics.tiers.moves.labels(to).inc()
            self.metrics.tiers.moved_bytes.labels(to).inc(got)
        return got

    async def _drop_old(self, moved: list[str], kept: str) -> None:
        """Remove the old copies once readers that resolved a path before the switch have opened it."""
        if not moved:
            return
        await asyncio.sleep(self.settings.unlink_grace_s)

        def drop_all() -> None:
            for image_id in moved:
                self.store.drop_other_copy(image_id, kept)

        await asyncio.to_thread(drop_all)

    async def _report(self) -> None:
        if self.report is None:
            return
        changed = list(self.store.take_variant_bytes().items())
        # In statements of REPORT_BATCH rows: after a restart every image with variants is reported once.
        for start in range(0, len(changed), REPORT_BATCH):
            batch = dict(changed[start : start + REPORT_BATCH])
            try:
                await self.report(batch)
            except Exception as exc:  # Postgres away: report the rest again next pass
                loops.raise_if_cancelling()
                self.store.requeue_variant_bytes(image_id for image_id, _bytes in changed[start:])
                logger.warning("variant bytes not reported: %r", exc)
                return

    async def _export(self) -> None:
        if self.metrics is None:
            return
        usage = await asyncio.to_thread(self.store.usage)
        for tier, figures in usage.tiers.items():
            self.metrics.tiers.set_tier(
                tier, figures.capacity_bytes, figures.used_bytes, figures.free_bytes, figures.originals
            )
        self.metrics.tiers.variant_bytes.labels(*self.metrics.tiers.node_labels).set(usage.variant_bytes)
