"""SQL for replicas: the replicator's outbox rows, flipping a replica to `ok`, finding holders."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool


async def replica_state(pool: AsyncConnectionPool, image_id: str, node_id: str) -> str | None:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT state FROM replicas WHERE image_id = %s AND node_id = %s", (image_id, node_id))
        row = await cur.fetchone()
    return row["state"] if row else None


class ImageGone(Exception):
    """The image was deleted while this node copied it: nothing was recorded."""


async def mark_ok(pool: AsyncConnectionPool, image_id: str, node_id: str, size: int) -> float | None:
    """Record the replica `ok`; returns the replication lag (seconds since the upload was recorded, on the
    database's clock, so node clocks do not matter), None when the image has no upload time. Raises
    ImageGone (recording nothing) when the image was deleted meanwhile."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO replicas (image_id, node_id, state, bytes, verified_at)"
            " SELECT %s, %s, 'ok', %s, now() FROM images WHERE image_id = %s AND status <> 'deleted'"
            " ON CONFLICT (image_id, node_id) DO UPDATE SET state = 'ok', bytes = EXCLUDED.bytes,"
            " verified_at = now(), updated_at = now()"
            " RETURNING (SELECT extract(epoch FROM clock_timestamp() - i.uploaded_at)::float8 FROM images i"
            "  WHERE i.image_id = replicas.image_id) AS lag_s",
            (image_id, node_id, size, image_id),
        )
        row = await cur.fetchone()
    if row is None:
        raise ImageGone(image_id)
    return row["lag_s"]


async def pending_for_node(
    pool: AsyncConnectionPool, node_id: str, older_than_s: float, limit: int = 200
) -> list[dict[str, Any]]:
    """This node's pending rows older than ``older_than_s`` (uses the partial index `replicas_pending`)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT r.image_id, i.set_id, i.origin_node, i.sha256, i.bytes, i.content_type"
            " FROM replicas r JOIN images i USING (image_id)"
            " WHERE r.node_id = %s AND r.state = 'pending' AND r.created_at < now() - make_interval(secs => %s)"
            " AND i.sha256 IS NOT NULL ORDER BY r.created_at LIMIT %s",
            (node_id, older_than_s, limit),
        )
        return await cur.fetchall()


async def miss_lookup(
    pool: AsyncConnectionPool, image_id: str, me: str, heartbeat_timeout_s: float
) -> dict[str, Any] | None:
    """For a node asked for an image it does not hold: the image's status and recorded hash, this node's
    replica state, and the healthy members holding an `ok` copy (all by primary key)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT i.status, i.sha256, i.bytes, i.content_type, i.visibility,"
            " (SELECT r.state FROM replicas r WHERE r.image_id = i.image_id AND r.node_id = %(me)s) AS my_state,"
            " coalesce((SELECT json_agg(json_build_object('node_id', n.node_id, 'base_url', n.base_url,"
            "   'lat', n.lat, 'lon', n.lon)) FROM replicas r JOIN nodes n USING (node_id)"
            "   WHERE r.image_id = i.image_id AND r.state = 'ok' AND n.node_id <> %(me)s AND n.state <> 'dead'"
            "   AND n.last_heartbeat > now() - make_interval(secs => %(timeout)s)), '[]') AS holders"
            " FROM images i WHERE i.image_id = %(id)s",
            {"id": image_id, "me": me, "timeout": heartbeat_timeout_s},
        )
        return await cur.fetchone()


async def mark_state(pool: AsyncConnectionPool, image_id: str, node_id: str, state: str) -> None:
    """Flag this node's replica `missing` or `corrupt` (the repair sweep copies it again)."""
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE replicas SET state = %s, updated_at = now() WHERE image_id = %s AND node_id = %s",
            (state, image_id, node_id),
        )


async def needs_copy_for_node(pool: AsyncConnectionPool, node_id: str, limit: int = 200) -> list[dict[str, Any]]:
    """This node's `missing`/`corrupt` rows (partial index `replicas_needs_copy`), oldest first."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT r.image_id, r.state, i.sha256, i.bytes, i.content_type"
            " FROM replicas r JOIN images i USING (image_id)"
            " WHERE r.node_id = %s AND r.state IN ('missing', 'corrupt') AND i.sha256 IS NOT NULL"
            " AND i.status <> 'deleted' ORDER BY r.updated_at LIMIT %s",
            (node_id, limit),
        )
        return await cur.fetchall()
