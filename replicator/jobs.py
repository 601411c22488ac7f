"""The replication job: make this node hold a verified copy of one image, then record the replica `ok`. It is
also the one repair path: a `corrupt` or `missing` replica (found by a serve, a variant build, the scrubber
or a miss) is replaced here from a holder whose bytes hash to the record, whoever asked for it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial

import aiohttp
from prometheus_client import CollectorRegistry

from common.bus import Bus
from common.config import Settings
from common.db import images as db_images
from common.db import pipeline as db_pipeline
from common.db import replicas as db_replicas
from common.db.rows import Pool
from common.events import ReplicaOk
from common.geo import Point
from common.metrics import ReplicationMetrics, StageMetrics
from replicator.fetch import ChecksumMismatch, fetch_original
from replicator.outcomes import Retry, backoff_s
from replicator.peers import Peer, sources
from storage_node.objects.store import ObjectMeta, SidecarLost, Store

logger = logging.getLogger(__name__)


@dataclass
class ReplicatorContext:
    settings: Settings
    pool: Pool
    store: Store
    session: aiohttp.ClientSession
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    copied: int = 0
    batched: int = 0  # of ``copied``: made by ``replicator.batch``
    metrics: ReplicationMetrics | None = None
    bus: Bus | None = None  # announces each replica made `ok` to the query services' lookups
    stages: StageMetrics = field(default_factory=lambda: StageMetrics(CollectorRegistry()))  # the node's, when set

    def count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.count(outcome)

    async def mark_ok(self, image_id: str, size: int) -> db_replicas.LagRow:
        """Record this node's replica `ok`, then say so on NATS: lookups hand it out from that moment on."""
        done = await db_replicas.mark_ok(self.pool, image_id, self.node_id, size)
        if done["ready"]:  # before lookups hand this copy out: servable here while Postgres is down
            await asyncio.to_thread(self.store.mark_ready, image_id)
        if self.bus is not None:
            await self.bus.announce(self.bus.subjects.image_event(ReplicaOk.name), ReplicaOk(image_id, self.node_id))
        return done

    @property
    def node_id(self) -> str:
        return self.settings.node.node_id


@dataclass(frozen=True)
class Wanted:
    image_id: str
    sha256: str
    bytes: int
    content_type: str


@contextlib.asynccontextmanager
async def image_lock(ctx: ReplicatorContext, image_id: str) -> AsyncIterator[None]:
    """One job per image at a time on this node (the consumer, the sweeps and read repair may race)."""
    lock = ctx.locks.setdefault(image_id, asyncio.Lock())
    try:
        async with lock:
            yield
    finally:
        if not lock.locked() and ctx.locks.get(image_id) is lock:
            del ctx.locks[image_id]


async def replicate(ctx: ReplicatorContext, want: Wanted, attempt: int = 1) -> bool:
    """Idempotent: returns False when the image was already here (no copy made), True after a copy.

    Raises Retry when no peer could supply verified bytes right now.
    """
    async with image_lock(ctx, want.image_id):
        try:
            return await _replicate_locked(ctx, want, attempt)
        except db_replicas.ImageGone:  # deleted while we copied: leave nothing behind
            await asyncio.to_thread(ctx.store.remove_image, want.image_id)
            return False


async def _copy_here(ctx: ReplicatorContext, want: Wanted, state: str) -> tuple[ObjectMeta | None, bool]:
    """The record of the copy stored here (its sidecar restored from ``want``, read from Postgres, when lost)
    and whether that copy is good: the recorded bytes, not known damaged, its replica not `corrupt`. A copy
    not known good (left by a crash before its row was `ok`, or whose sidecar was lost) is hashed first."""
    trusted = state == "ok"  # a copy recorded `ok` was verified when written (and is scrubbed since)
    try:
        have = await asyncio.to_thread(ctx.store.meta, want.image_id)
    except SidecarLost:  # restored from the record, never from the bytes
        private = await db_images.is_private(ctx.pool, want.image_id)
        record = ObjectMeta(want.sha256, want.content_type, want.bytes, private=private)
        have = await asyncio.to_thread(ctx.store.restore_meta, want.image_id, record)
        trusted = False
    if have is None or have.sha256 != want.sha256 or state not in ("ok", "pending", "missing"):
        return have, False
    if ctx.store.is_corrupt(want.image_id):
        return have, False
    good = trusted or await asyncio.to_thread(ctx.store.original_sha256, want.image_id) == want.sha256
    return have, good


async def _replicate_locked(ctx: ReplicatorContext, want: Wanted, attempt: int) -> bool:
    started = time.perf_counter()
    stages = ctx.stages
    async with stages.awaited("replica:plan"):
        plan = await db_replicas.copy_plan(ctx.pool, want.image_id, ctx.node_id, want.sha256)
    if plan is None:
        return False  # no longer wanted here: deleted meanwhile, or this node left the set
    state = plan["state"]
    have, good = await _copy_here(ctx, want, state)
    if good:
        if state != "ok":
            await ctx.mark_ok(want.image_id, want.bytes)
            _repaired(ctx, want, state, "the bytes already here")
        ctx.count("present")
        return False
    if have is not None:  # a corrupt or stale copy: drop it (variants too) before fetching a good one
        await asyncio.to_thread(ctx.store.remove_image, want.image_id)
    if plan["status"] in db_pipeline.GONE:
        return False  # rejected (or deleted) while queued: nothing to copy
    # A linked copy takes its privacy from the image row (a fetched one from the peer's answer).
    meta = ObjectMeta(want.sha256, want.content_type, want.bytes, private=plan["private"])
    same = plan["same"]
    linked = None if same is None else await asyncio.to_thread(ctx.store.link_copy, same, want.image_id, meta)
    if linked is not None:
        await ctx.mark_ok(want.image_id, want.bytes)  # dedupe: no bytes copied
        logger.info("replicated %s as a link to identical %s", want.image_id, same)
        _repaired(ctx, want, state, f"identical image {same}")
        return True
    node = ctx.settings.node
    peers = sources(plan["holders"], Point(node.lat, node.lon), node.region, ctx.settings.health.heartbeat_timeout_s)
    errors: list[str] = []
    for peer in peers:
        if not await _store_from(ctx, want, peer, errors):
            continue
        async with stages.awaited("replica:mark_ok"):
            done = await ctx.mark_ok(want.image_id, want.bytes)
        ctx.copied += 1
        ctx.count("copied")
        if ctx.metrics is not None:
            if done["backfill"]:  # catching up on old images: reported apart, never as lag
                ctx.metrics.count_backfill()
            elif done["lag_s"] is not None:
                ctx.metrics.observe_lag(max(done["lag_s"], 0.0))
        logger.info(
            "replicated %s from %s (%d bytes) in %.3fs",
            want.image_id,
            peer.node_id,
            want.bytes,
            time.perf_counter() - started,
        )
        _repaired(ctx, want, state, f"node {peer.node_id}")
        return True
    reason = "; ".join(errors) or "no healthy peer holds it yet"
    ctx.count("retry")
    raise Retry(f"replicate {want.image_id}: {reason}", backoff_s(attempt))


async def _store_from(ctx: ReplicatorContext, want: Wanted, peer: Peer, errors: list[str]) -> bool:
    """Fetch the original from ``peer`` (hashed as it arrives) and store it here; False, with the reason added to
    ``errors``, when that peer could not supply the recorded bytes."""
    tmp = ctx.store.new_tmp_path()
    try:
        async with ctx.stages.awaited("replica:fetch"):
            got = await fetch_original(ctx.session, ctx.settings, peer, want.image_id, want.sha256, want.bytes, tmp)
        meta = ObjectMeta(want.sha256, want.content_type, want.bytes, private=got.private)
        store_it = partial(ctx.store.commit_original, tmp, want.image_id, meta)
        await asyncio.to_thread(ctx.stages.timed("replica:store", store_it))
        return True
    except ChecksumMismatch as exc:
        logger.error("replicate %s: bad checksum from %s, not stored: %s", want.image_id, peer.node_id, exc)
        errors.append(f"{peer.node_id}: checksum mismatch")
        ctx.count("checksum_mismatch")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        errors.append(f"{peer.node_id}: {exc!r}")
    finally:
        if tmp.exists():  # (moved into place once stored)
            await asyncio.to_thread(ctx.store.discard_tmp, tmp)
    return False


def _repaired(ctx: ReplicatorContext, want: Wanted, was: str, source: str) -> None:
    """A replica that was `corrupt` or `missing` is `ok` again with verified bytes: counted and logged."""
    if was not in ("corrupt", "missing"):
        return
    logger.warning(
        "repaired: image %s on node %s was %s, now holds the recorded sha256 %s... (%d bytes) from %s",
        want.image_id,
        ctx.node_id,
        was,
        want.sha256[:12],
        want.bytes,
        source,
    )
    if ctx.metrics is not None:
        ctx.metrics.count_repair(was)


async def drop_rejected(ctx: ReplicatorContext, image_id: str) -> None:
    """An image was rejected: remove its files here (after any copy in flight, which holds the lock)."""
    lock = ctx.locks.setdefault(image_id, asyncio.Lock())
    try:
        async with lock:
            await asyncio.to_thread(ctx.store.remove_image, image_id)
            await db_pipeline.drop_rejected_replica(ctx.pool, image_id, ctx.node_id)
    finally:
        if not lock.locked() and ctx.locks.get(image_id) is lock:
            del ctx.locks[image_id]
