"""Fresh uploads copied in batches: under a burst, the consumer hands over every upload event of one fetch,
and their copies share one plan query, one request per source peer, one thread hop to verify and store
them, and one statement recording them `ok` (``replicator.jobs`` does the same work one image at a time).

Only the plain case is batched: this node's replica `pending`, the image live, no identical copy here to
link, nothing of it on disk yet, a healthy holder that offers its bytes. Anything else (a copy to hash or
repair, a peer without it, bytes that do not hash to the record, an image locked by another job) is left
to the single-image job, which the caller runs for every image this returns as not done.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial

import aiohttp

from common.db import pipeline as db_pipeline
from common.db import replicas as db_replicas
from common.events import ReplicaOk
from common.geo import Point
from replicator.fetch import Blob, fetch_originals
from replicator.jobs import ReplicatorContext, Wanted
from replicator.peers import Peer, sources
from storage_node.objects.peer import MAX_BATCH_BYTES, MAX_BATCH_IDS
from storage_node.objects.store import ObjectMeta

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stored:
    """What one batch's thread hop did: the copies stored, and the ids whose bytes did not hash to the
    record (not stored)."""

    stored: list[str]
    mismatched: list[str]


async def copy_batch(ctx: ReplicatorContext, wants: list[Wanted]) -> set[str]:
    """Copy what it can of ``wants`` here; returns the ids that need nothing more (copied, or no longer
    wanted here). Never raises for one image: what is not done is the single-image job's."""
    done: set[str] = set()
    async with _locked(ctx, [w.image_id for w in wants]) as mine:
        todo = {w.image_id: w for w in wants if w.image_id in mine and w.bytes <= MAX_BATCH_BYTES}
        if len(todo) < 2:
            return done
        started = time.perf_counter()
        async with ctx.stages.awaited("replica:plan"):
            plans = await db_replicas.copy_plans(ctx.pool, ctx.node_id, {i: w.sha256 for i, w in todo.items()})
        done.update(i for i in todo if i not in plans)  # deleted meanwhile, or this node left the set
        node, timeout_s = ctx.settings.node, ctx.settings.health.heartbeat_timeout_s
        here = Point(node.lat, node.lon)
        groups: dict[str, tuple[Peer, list[Wanted]]] = {}
        for image_id, plan in plans.items():
            if plan["state"] != "pending" or plan["status"] in db_pipeline.GONE or plan["same"] is not None:
                continue
            peers = sources(plan["holders"], here, node.region, timeout_s)
            if peers:
                groups.setdefault(peers[0].node_id, (peers[0], []))[1].append(todo[image_id])
        for peer, group in groups.values():
            for chunk in _chunks(group):
                private = {w.image_id: plans[w.image_id]["private"] for w in chunk}
                done |= await _copy_from(ctx, peer, chunk, private, started)
    return done


def _chunks(wants: list[Wanted]) -> list[list[Wanted]]:
    """Requests within the protocol's caps (ids and bytes per answer)."""
    chunks: list[list[Wanted]] = [[]]
    size = 0
    for want in wants:
        if len(chunks[-1]) == MAX_BATCH_IDS or size + want.bytes > MAX_BATCH_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(want)
        size += want.bytes
    return chunks


async def _copy_from(
    ctx: ReplicatorContext, peer: Peer, chunk: list[Wanted], private: dict[str, bool], started: float
) -> set[str]:
    try:
        async with ctx.stages.awaited("replica:fetch"):
            blobs = await fetch_originals(ctx.session, ctx.settings, peer, {w.image_id: w.bytes for w in chunk})
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError, asyncio.IncompleteReadError) as exc:
        logger.info("batch of %d from %s failed (%r): copied one by one", len(chunk), peer.node_id, exc)
        return set()
    metas = {
        w.image_id: ObjectMeta(w.sha256, w.content_type, w.bytes, private=private[w.image_id] or b.private)
        for w in chunk
        if (b := blobs.get(w.image_id)) is not None
    }
    result = await asyncio.to_thread(_verify_and_store, ctx, blobs, metas)
    for image_id in result.mismatched:
        logger.error("replicate %s: bad checksum from %s, not stored", image_id, peer.node_id)
        ctx.count("checksum_mismatch")
    if not result.stored:
        return set()
    sizes = {i: metas[i].bytes for i in result.stored}
    try:
        async with ctx.stages.awaited("replica:mark_ok"):
            rows = await db_replicas.mark_ok_many(ctx.pool, ctx.node_id, sizes)
    except Exception as exc:  # the files stay: the single-image job finds them, hashes them and records them
        logger.warning("recording %d copies from %s failed: %r", len(sizes), peer.node_id, exc)
        return set()
    for image_id in sizes.keys() - rows.keys():  # deleted while we copied: leave nothing behind
        await asyncio.to_thread(ctx.store.remove_image, image_id)
    ready = [image_id for image_id, row in rows.items() if row["ready"]]
    if ready:  # before lookups hand these copies out: servable here while Postgres is down (``ReplicatorContext``)
        await asyncio.to_thread(ctx.store.mark_ready_all, ready)
    for image_id, row in rows.items():
        ctx.copied += 1
        ctx.batched += 1
        ctx.count("copied")
        if ctx.metrics is not None:
            if row["backfill"]:
                ctx.metrics.count_backfill()
            elif row["lag_s"] is not None:
                ctx.metrics.observe_lag(max(row["lag_s"], 0.0))
        if ctx.bus is not None:
            await ctx.bus.announce(ctx.bus.subjects.image_event(ReplicaOk.name), ReplicaOk(image_id, ctx.node_id))
    logger.info(
        "replicated %d image(s) from %s in one batch in %.3fs", len(rows), peer.node_id, time.perf_counter() - started
    )
    return set(sizes)


def _verify_and_store(ctx: ReplicatorContext, blobs: dict[str, Blob], metas: dict[str, ObjectMeta]) -> Stored:
    """On a worker thread: hash each copy, and store those that match their record (each fsync'd, with its
    directory), unless something of the image is on disk already (the single-image job looks at that)."""
    stored: list[str] = []
    mismatched: list[str] = []
    store = ctx.store
    for image_id, meta in metas.items():
        data = blobs[image_id].data
        if hashlib.sha256(data).hexdigest() != meta.sha256:
            mismatched.append(image_id)
            continue
        if store.tier_of(image_id) is not None:
            continue
        tmp = store.new_tmp_path()
        try:
            tmp.write_bytes(data)
            ctx.stages.timed("replica:store", partial(store.commit_original, tmp, image_id, meta))()
            stored.append(image_id)
        except OSError as exc:
            logger.warning("storing %s failed: %r", image_id, exc)
        finally:
            store.discard_tmp(tmp)
    return Stored(stored, mismatched)


@contextlib.asynccontextmanager
async def _locked(ctx: ReplicatorContext, image_ids: list[str]) -> AsyncIterator[set[str]]:
    """The per-image locks of ``image_ids`` that no other job holds now (never waits for one)."""
    held: list[tuple[str, asyncio.Lock]] = []
    try:
        for image_id in image_ids:
            lock = ctx.locks.setdefault(image_id, asyncio.Lock())
            if not lock.locked():
                await lock.acquire()  # free: taken at once
                held.append((image_id, lock))
        yield {image_id for image_id, _ in held}
    finally:
        for image_id, lock in held:
            lock.release()
            if ctx.locks.get(image_id) is lock and not lock.locked():
                del ctx.locks[image_id]
