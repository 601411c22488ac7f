"""Variant builds with libvips in a bounded thread pool, one build per (image, variant) however many ask."""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pyvips

from common.variants import VariantSpec
from storage_node.store import ORIGINAL, Store

if TYPE_CHECKING:
    from common.metrics import NodeMetrics

JPEG_QUALITY = 82
WEBP_QUALITY = 80


def build_variant(src: Path, spec: VariantSpec, dest: Path) -> None:
    """Blocking: shrink-on-load thumbnail (auto-oriented, never upscaled), sRGB, metadata stripped."""
    image = pyvips.Image.thumbnail(str(src), spec.width, height=10_000_000, size="down")
    if image.interpretation not in ("srgb", "b-w"):
        image = image.colourspace("srgb")
    if spec.fmt == "jpg":
        if image.hasalpha():
            image = image.flatten(background=[255])
        image.jpegsave(str(dest), Q=JPEG_QUALITY, keep="none", optimize_coding=True)
    elif spec.fmt == "webp":
        image.webpsave(str(dest), Q=WEBP_QUALITY, keep="none")
    else:  # pragma: no cover - parse_variant only yields known formats
        raise ValueError(spec.fmt)


class Renderer:
    def __init__(self, store: Store, threads: int, metrics: NodeMetrics | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 2, thread_name_prefix="render")
        self._inflight: dict[tuple[str, str], asyncio.Future[Path]] = {}
        self.builds = 0

    async def ensure(self, image_id: str, spec: VariantSpec) -> Path:
        """The variant's path, building it first if it is not on disk yet (single-flight)."""
        dest = self.store.path_for(image_id, spec.name)
        if self.store.has_variant(image_id, spec.name):
            self._count("hit")
            return dest
        key = (image_id, spec.name)
        running = self._inflight.get(key)
        if running is not None:
            self._count("miss")  # waits for the build already running
            return await asyncio.shield(running)
        if await asyncio.to_thread(dest.exists):
            self.store.note_variant(image_id, spec.name)
            self._count("hit")
            return dest
        self._count("miss")
        future: asyncio.Future[Path] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            path = await asyncio.get_running_loop().run_in_executor(self.pool, self._build, image_id, spec)
            self.store.note_variant(image_id, spec.name)
            future.set_result(path)
            return path
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters (if any) re-raise it
            raise
        finally:
            del self._inflight[key]

    def _build(self, image_id: str, spec: VariantSpec) -> Path:
        tmp = self.store.new_tmp_path().with_suffix("." + spec.fmt)
        try:
            started = time.perf_counter()
            build_variant(self.store.path_for(image_id, ORIGINAL), spec, tmp)
            self.builds += 1
            if self.metrics is not None:
                self.metrics.variant_build_duration.labels(spec.fmt).observe(time.perf_counter() - started)
                self.metrics.variant_builds.labels(spec.fmt).inc()
            return self.store.commit(tmp, image_id, spec.name)
        finally:
            self.store.discard_tmp(tmp)

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.variant_cache.labels(result).inc()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
