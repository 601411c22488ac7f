"""SQL for replicas: the replicator's outbox rows, flipping a replica to `ok`, finding holders.

Holder queries return every node with an `ok` replica (but the asking node), with its state and heartbeat
age on the database's clock; which of them are healthy, and in what order, is ``common.holders``' call.
"""

from __future__ import annotations

from typing import TypedDict

from common.db.pipeline import GONE
from common.db.rows import Pool, fetch_all, fetch_one
from common.geo import Point
from common.holders import Holder

# A holder of an image's `ok` replica (``r`` replicas, ``n`` nodes): the columns of ``HolderRow``.
HOLDER_COLUMNS = (
    "n.node_id, n.region, n.base_url, n.lat, n.lon, n.state,"
    " extract(epoch FROM now() - n.last_heartbeat)::float8 AS heartbeat_age_s, r.state AS replica_state,"
    " n.stopping_at IS NOT NULL AS stopping"
)


class HolderRow(TypedDict):
    node_id: str
    region: str
    base_url: str
    lat: float
    lon: float
    state: str  # the node's
    heartbeat_age_s: float | None  # None until its first heartbeat
    replica_state: str
    stopping: bool  # it announced that it is stopping (migration 012)


def as_holders(rows: list[HolderRow]) -> list[Holder]:
    # float(): rows that came through json_agg carry JSON numbers, which may parse as int.
    return [
        Holder(
            r["node_id"],
            r["region"],
            r["base_url"],
            Point(float(r["lat"]), float(r["lon"])),
            r["state"],
            None if r["heartbeat_age_s"] is None else float(r["heartbeat_age_s"]),
            r["replica_state"],
            bool(r["stopping"]),
        )
        for r in rows
    ]


class CopyPlanRow(TypedDict):
    state: str  # this node's replica
    status: str  # the image's
    private: bool  # a copy must be kept private (anything but `public`)
    same: str | None  # another live image with these exact bytes held `ok` here, to hard-link
    holders: list[HolderRow]  # the other nodes holding an `ok` replica, healthy or not (through json_agg)


async def copy_plan(pool: Pool, image_id: str, node_id: str, sha256: str) -> CopyPlanRow | None:
    """What a replication job needs to know of the image and of this node's replica, in one round trip; None
    when the replica is no longer wanted here (deleted, or this node left the set)."""
    return await fetch_one(
        pool,
        CopyPlanRow,
        "SELECT r.state, i.status, i.visibility <> 'public' AS private,"
        " (SELECT o.image_id FROM images o JOIN replicas h ON h.image_id = o.image_id AND h.node_id = r.node_id"
        "   WHERE o.sha256 = %s AND o.image_id <> i.image_id AND h.state = 'ok' AND o.status <> ALL(%s)"
        "   ORDER BY o.uploaded_at LIMIT 1) AS same,"
        " (SELECT coalesce(json_agg(h), '[]') FROM (SELECT " + HOLDER_COLUMNS + " FROM replicas r JOIN nodes n"
        "   USING (node_id) WHERE r.image_id = %s AND r.state = 'ok' AND n.node_id <> %s) h) AS holders"
        " FROM replicas r JOIN images i ON i.image_id = r.image_id"
        " WHERE r.image_id = %s AND r.node_id = %s",
        (sha256, list(GONE), image_id, node_id, image_id, node_id),
    )


class BatchPlanRow(CopyPlanRow):
    image_id: str


async def copy_plans(pool: Pool, node_id: str, wanted: dict[str, str]) -> dict[str, BatchPlanRow]:
    """``copy_plan`` for several images at once (``wanted``: image id -> recorded sha256), in one round trip;
    an image whose replica is no longer wanted here is left out."""
    ids = sorted(wanted)
    rows = await fetch_all(
        pool,
        BatchPlanRow,
        "SELECT w.image_id, r.state, i.status, i.visibility <> 'public' AS private,"
        " (SELECT o.image_id FROM images o JOIN replicas h ON h.image_id = o.image_id AND h.node_id = r.node_id"
        "   WHERE o.sha256 = w.sha256 AND o.image_id <> i.image_id AND h.state = 'ok' AND o.status <> ALL(%s)"
        "   ORDER BY o.uploaded_at LIMIT 1) AS same,"
        " (SELECT coalesce(json_agg(h), '[]') FROM (SELECT " + HOLDER_COLUMNS + " FROM replicas r JOIN nodes n"
        "   USING (node_id) WHERE r.image_id = w.image_id AND r.state = 'ok' AND n.node_id <> %s) h) AS holders"
        " FROM unnest(%s::text[], %s::text[]) AS w(image_id, sha256)"
        " JOIN replicas r ON r.image_id = w.image_id AND r.node_id = %s JOIN images i ON i.image_id = w.image_id",
        (list(GONE), node_id, ids, [wanted[i] for i in ids], node_id),
    )
    return {r["image_id"]: r for r in rows}


class ImageGone(Exception):
    """The image was deleted while this node copied it: nothing was recorded."""


class LagRow(TypedDict):
    lag_s: float | None
    # The image was uploaded before this node joined (a new or replacement member catching up): its age is
    # not replication lag.
    backfill: bool
    # The image was `ready` already: its `processed` event may have come before the copy, so the copy's node
    # notes it ready on disk itself (``Store.mark_ready``) for serving while Postgres is down.
    ready: bool


async def mark_ok(pool: Pool, image_id: str, node_id: str, size: int) -> LagRow:
    """Record the replica `ok`; returns the replication lag (seconds since the upload was recorded, on the
    database's clock, so node clocks do not matter; None when the image has no upload time) and whether the
    copy was a backfill. Raises ImageGone (recording nothing) when the image was deleted meanwhile."""
    row = await fetch_one(
        pool,
        LagRow,
        "INSERT INTO replicas (image_id, node_id, state, bytes, verified_at)"
        " SELECT %s, %s, 'ok', %s, now() FROM images WHERE image_id = %s AND status <> 'deleted'"
        " ON CONFLICT (image_id, node_id) DO UPDATE SET state = 'ok', bytes = EXCLUDED.bytes,"
        " verified_at = now(), updated_at = now()"
        " RETURNING (SELECT extract(epoch FROM clock_timestamp() - i.uploaded_at)::float8 FROM images i"
        "  WHERE i.image_id = replicas.image_id) AS lag_s,"
        " coalesce((SELECT i.uploaded_at < n.registered_at FROM images i, nodes n"
        "  WHERE i.image_id = replicas.image_id AND n.node_id = replicas.node_id), false) AS backfill,"
        " coalesce((SELECT i.status = 'ready' FROM images i WHERE i.image_id = replicas.image_id), false) AS ready",
        (image_id, node_id, size, image_id),
    )
    if row is None:
        raise ImageGone(image_id)
    return row


class BatchLagRow(LagRow):
    image_id: str


async def mark_ok_many(pool: Pool, node_id: str, sizes: dict[str, int]) -> dict[str, BatchLagRow]:
    """``mark_ok`` for several replicas of this node in one statement (``sizes``: image id -> bytes); an image
    deleted meanwhile is left out of the result, and nothing is recorded for it."""
    ids = sorted(sizes)  # one order for every writer of these rows: no deadlock between two batches
    rows = await fetch_all(
        pool,
        BatchLagRow,
        "INSERT INTO replicas (image_id, node_id, state, bytes, verified_at)"
        " SELECT w.image_id, %s, 'ok', w.bytes, now() FROM unnest(%s::text[], %s::bigint[]) AS w(image_id, bytes)"
        " JOIN images i ON i.image_id = w.image_id AND i.status <> 'deleted' ORDER BY w.image_id"
        " ON CONFLICT (image_id, node_id) DO UPDATE SET state = 'ok', bytes = EXCLUDED.bytes,"
        " verified_at = now(), updated_at = now()"
        " RETURNING replicas.image_id,"
        " (SELECT extract(epoch FROM clock_timestamp() - i.uploaded_at)::float8 FROM images i"
        "  WHERE i.image_id = replicas.image_id) AS lag_s,"
        " coalesce((SELECT i.uploaded_at < n.registered_at FROM images i, nodes n"
        "  WHERE i.image_id = replicas.image_id AND n.node_id = replicas.node_id), false) AS backfill,"
        " coalesce((SELECT i.status = 'ready' FROM images i WHERE i.image_id = replicas.image_id), false) AS ready",
        (node_id, ids, [sizes[i] for i in ids]),
    )
    return {r["image_id"]: r for r in rows}


class CopyRow(TypedDict):
    """An image this node should copy. sha256, bytes and content_type are recorded together at upload, and
    these queries keep only images with a sha256, so none of the three is NULL here."""

    image_id: str
    sha256: str
    bytes: int
    content_type: str


class PendingRow(CopyRow):
    set_id: str
    origin_node: str


async def pending_for_node(pool: Pool, node_id: str, older_than_s: float, limit: int = 200) -> list[PendingRow]:
    """This node's pending rows older than ``older_than_s`` (uses the partial index `replicas_pending`)."""
    return await fetch_all(
        pool,
        PendingRow,
        "SELECT r.image_id, i.set_id, i.origin_node, i.sha256, i.bytes, i.content_type"
        " FROM replicas r JOIN images i USING (image_id)"
        " WHERE r.node_id = %s AND r.state = 'pending' AND r.created_at < now() - make_interval(secs => %s)"
        " AND i.sha256 IS NOT NULL ORDER BY r.created_at LIMIT %s",
        (node_id, older_than_s, limit),
    )


class MissRow(TypedDict):
    status: str
    sha256: str | None  # None until uploaded; then bytes and content_type are set too
    bytes: int | None
    content_type: str | None
    visibility: str
    my_state: str | None  # this node's replica state, None when it has no row
    holders: list[HolderRow]  # json_agg of HOLDER_COLUMNS


async def miss_lookup(pool: Pool, image_id: str, me: str) -> MissRow | None:
    """For a node asked for an image it does not hold: the image's status and recorded hash, this node's
    replica state, and the other nodes holding an `ok` copy, healthy or not (all by primary key)."""
    return await fetch_one(
        pool,
        MissRow,
        "SELECT i.status, i.sha256, i.bytes, i.content_type, i.visibility,"
        " (SELECT r.state FROM replicas r WHERE r.image_id = i.image_id AND r.node_id = %(me)s) AS my_state,"
        " (SELECT coalesce(json_agg(h), '[]') FROM (SELECT " + HOLDER_COLUMNS + " FROM replicas r"
        "   JOIN nodes n USING (node_id) WHERE r.image_id = i.image_id AND r.state = 'ok' AND n.node_id <> %(me)s)"
        "   h) AS holders"
        " FROM images i WHERE i.image_id = %(id)s",
        {"id": image_id, "me": me},
    )


async def mark_state(pool: Pool, image_id: str, node_id: str, state: str) -> None:
    """Flag this node's replica `missing` or `corrupt` (the repair sweep copies it again)."""
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE replicas SET state = %s, updated_at = now() WHERE image_id = %s AND node_id = %s",
            (state, image_id, node_id),
        )


class NeedsCopyRow(CopyRow):
    state: str  # `missing` or `corrupt`


async def needs_copy_for_node(pool: Pool, node_id: str, limit: int = 200) -> list[NeedsCopyRow]:
    """This node's `missing`/`corrupt` rows (partial index `replicas_needs_copy`), oldest first."""
    return await fetch_all(
        pool,
        NeedsCopyRow,
        "SELECT r.image_id, r.state, i.sha256, i.bytes, i.content_type"
        " FROM replicas r JOIN images i USING (image_id)"
        " WHERE r.node_id = %s AND r.state IN ('missing', 'corrupt') AND i.sha256 IS NOT NULL"
        " AND i.status <> 'deleted' ORDER BY r.updated_at LIMIT %s",
        (node_id, limit),
    )


async def record_variant_bytes(pool: Pool, node_id: str, variant_bytes: dict[str, int]) -> None:
    """Each image's bytes of variants on this node (sent in batches by the node's tier manager, never per
    read); images without a replica row here (deleted meanwhile) are skipped."""
    ids = list(variant_bytes)
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE replicas r SET variant_bytes = v.bytes"
            " FROM unnest(%s::text[], %s::bigint[]) AS v(image_id, bytes)"
            " WHERE r.image_id = v.image_id AND r.node_id = %s AND r.variant_bytes <> v.bytes",
            (ids, [variant_bytes[i] for i in ids], node_id),
        )


class IdRow(TypedDict):
    image_id: str


async def ready_held(pool: Pool, node_id: str, after: str, limit: int = 10_000) -> list[str]:
    """Image ids above ``after``, in order, that are `ready` with a replica row on this node (a page of them)."""
    rows = await fetch_all(
        pool,
        IdRow,
        "SELECT r.image_id FROM replicas r JOIN images i USING (image_id)"
        " WHERE r.node_id = %s AND i.status = 'ready' AND r.image_id > %s ORDER BY r.image_id LIMIT %s",
        (node_id, after, limit),
    )
    return [row["image_id"] for row in rows]
