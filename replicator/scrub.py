"""Scrubbing: re-hash every stored original at a bounded rate (``scrub.bytes_per_s``), one pass after
another with ``scrub.interval_s`` between them, so a damaged original is found within one pass plus the
pause. What it compares against is the record: the sidecar, which only ever holds a copy of the SHA-256
recorded in Postgres at upload (a lost one is restored from Postgres first), and Postgres itself before
anything is called corrupt. A copy whose bytes no longer match is reported (``storage_node.integrity``:
not served, variants removed, counted, logged, `corrupt`) and replaced from a member whose copy hashes to
the recorded SHA-256 (the fetch verifies against that hash, so a peer with bad bytes is skipped, never
trusted because it answered first).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common import loops
from common.db import replicas as db_replicas
from common.errors import Unavailable
from common.metrics import NodeMetrics
from replicator.jobs import ReplicatorContext, Wanted, replicate
from replicator.outcomes import Retry
from replicator.ratelimit import ByteRate
from storage_node.integrity import Integrity
from storage_node.objects.store import ORIGINAL, ObjectMeta, SidecarLost, Store
from storage_node.objects.verify import OriginalMismatch

logger = logging.getLogger(__name__)
BLOCK = 1024 * 1024
# Originals checked per round (two thread hops: their sidecars, then their bytes): a thread hop and an awaited
# rate check per image cost more CPU than hashing a ~100 KB photo.
CHUNK = 16


@dataclass
class ScrubResult:
    checked: int = 0
    bytes: int = 0
    corrupt: int = 0
    repaired: int = 0
    seconds: float = 0.0


def sha256_file(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fobj:
            for block in iter(lambda: fobj.read(BLOCK), b""):
                digest.update(block)
    except FileNotFoundError:
        return None  # deleted meanwhile
    return digest.hexdigest()


def _hash_all(store: Store, image_ids: list[str]) -> dict[str, str | None]:
    return {image_id: sha256_file(store.original_path(image_id)) for image_id in image_ids}


def iter_image_ids(objects: Path) -> Iterator[str]:
    """Image ids on disk (objects/<aa>/<bb>/<id>/original), one directory listing at a time (blocking)."""
    for aa in sorted(os.scandir(objects), key=lambda e: e.name) if objects.exists() else []:
        if not aa.is_dir():
            continue
        for bb in os.scandir(aa.path):
            if not bb.is_dir():
                continue
            for image in os.scandir(bb.path):
                if os.path.exists(os.path.join(image.path, ORIGINAL)):
                    yield image.name


class Scrubber:
    def __init__(
        self,
        ctx: ReplicatorContext,
        bytes_per_s: int,
        interval_s: float,
        metrics: NodeMetrics | None = None,
        integrity: Integrity | None = None,
    ) -> None:
        self.ctx = ctx
        self.rate = ByteRate(bytes_per_s)
        self.interval_s = interval_s
        self.metrics = metrics
        self.integrity = integrity  # the node's: how a finding is reported (None: logged only)
        self.passes = 0

    async def run_forever(self) -> None:
        while True:
            try:
                result = await self.run_pass()
                logger.info(
                    "scrub pass: %d originals, %d bytes, %d corrupt, %d repaired in %.1fs",
                    result.checked,
                    result.bytes,
                    result.corrupt,
                    result.repaired,
                    result.seconds,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                loops.raise_if_cancelling()
                logger.warning("scrub pass failed: %r", exc)
            await loops.sleep(self.interval_s)

    async def run_pass(self) -> ScrubResult:
        started = time.perf_counter()
        result = ScrubResult()
        store = self.ctx.store
        # Originals in every tier (a cold original is scrubbed where it lies).
        roots = [store.objects] + ([store.cold_objects] if store.cold_objects is not None else [])
        ids = await asyncio.to_thread(lambda: sorted({i for root in roots for i in iter_image_ids(root)}))
        for first in range(0, len(ids), CHUNK):
            if self.metrics is not None:
                self.metrics.scrub_progress.set(first / len(ids))
            # Known bad ones are skipped: their repair is owed (the sweep retries `corrupt` rows).
            metas = await self._metas([i for i in ids[first : first + CHUNK] if not store.is_corrupt(i)])
            await self.rate.take(sum(meta.bytes for meta in metas.values()))
            hashes = await asyncio.to_thread(_hash_all, store, list(metas))
            for image_id, meta in metas.items():
                actual = hashes[image_id]
                if actual is None:
                    continue
                result.checked += 1
                result.bytes += meta.bytes
                if self.metrics is not None:
                    self.metrics.scrub_checked.inc()
                if actual != meta.sha256:
                    result.corrupt += 1
                    result.repaired += await self._repair(image_id, actual)
        self.passes += 1
        if self.metrics is not None:
            self.metrics.scrub_progress.set(1.0)
        result.seconds = time.perf_counter() - started
        return result

    async def _metas(self, image_ids: list[str]) -> dict[str, ObjectMeta]:
        """The records of ``image_ids`` as their sidecars hold them, read in one thread hop; a lost sidecar is
        then restored on its own (``_meta``). An image that is not here (any more) is left out."""

        def read() -> tuple[dict[str, ObjectMeta], list[str]]:
            found: dict[str, ObjectMeta] = {}
            lost: list[str] = []
            for image_id in image_ids:
                try:
                    meta = self.ctx.store.meta(image_id)
                except SidecarLost:
                    lost.append(image_id)
                    continue
                if meta is not None:
                    found[image_id] = meta
            return found, lost

        found, lost = await asyncio.to_thread(read)
        for image_id in lost:
            if (meta := await self._meta(image_id)) is not None:
                found[image_id] = meta
        return found

    async def _meta(self, image_id: str) -> ObjectMeta | None:
        """The record as the sidecar holds it, a lost sidecar first restored from Postgres (None: skip it)."""
        if self.integrity is not None:
            try:
                return await self.integrity.meta(image_id)
            except Unavailable:
                return None  # Postgres unreachable: this one waits for the next pass
        try:
            return await asyncio.to_thread(self.ctx.store.meta, image_id)
        except SidecarLost:
            return None

    async def _repair(self, image_id: str, actual: str) -> int:
        row = await db_replicas.miss_lookup(self.ctx.pool, image_id, self.ctx.node_id)
        if row is None or row["sha256"] is None or row["my_state"] is None:
            return 0  # not an image this node should hold (deleted meanwhile): the delete sweep removes it
        if row["bytes"] is None or row["content_type"] is None:
            return 0  # never: both are recorded with the sha256 at upload (this narrows their types)
        if actual == row["sha256"]:  # the bytes are right and the sidecar is not the record: rewrite it
            record = ObjectMeta(row["sha256"], row["content_type"], row["bytes"], row["visibility"] != "public")
            await asyncio.to_thread(self.ctx.store.restore_meta, image_id, record)
            logger.warning("scrub: image %s on node %s: sidecar restored from the record", image_id, self.ctx.node_id)
            return 0
        mismatch = OriginalMismatch("sha256", row["sha256"], actual)
        if self.integrity is not None:
            await self.integrity.found(image_id, "scrub", mismatch)
        else:
            logger.error("corrupt copy: image %s on node %s, found by scrub: %s", image_id, self.ctx.node_id, mismatch)
        if self.metrics is not None:
            self.metrics.scrub_corruptions.inc()
        await db_replicas.mark_state(self.ctx.pool, image_id, self.ctx.node_id, "corrupt")
        try:
            await replicate(self.ctx, Wanted(image_id, row["sha256"], row["bytes"], row["content_type"]))
        except Retry as exc:
            logger.warning("scrub: repair of %s deferred (the sweep retries corrupt rows): %s", image_id, exc)
            return 0
        return 1
