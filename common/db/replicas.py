"""SQL for replicas: the replicator's outbox rows, flipping a replica to `ok`, finding holders."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool


async def replica_state(pool: AsyncConnectionPool, image_id: str, node_id: str) -> str | None:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT state FROM replicas WHERE image_id = %s AND node_id = %s", (image_id, node_id)
        )
        row = await cur.fetchone()
    return row["state"] if row else None


async def mark_ok(pool: AsyncConnectionPool, image_id: str, node_id: str, size: int) -> float | None:
    """Record the replica `ok`; returns the replication lag (seconds since the upload was recorded, on the
    database's clock, so node clocks do not matter), None when the image has no upload time."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO replicas (image_id, node_id, state, bytes, verified_at) VALUES (%s, %s, 'ok', %s, now())"
            " ON CONFLICT (image_id, node_id) DO UPDATE SET state = 'ok', bytes = EXCLUDED.bytes,"
            " verified_at = now(), updated_at = now()"
            " RETURNING (SELECT extract(epoch FROM clock_timestamp() - i.uploaded_at)::float8 FROM images i"
            "  WHERE i.image_id = replicas.image_id) AS lag_s",
            (image_id, node_id, size),
        )
        row = await cur.fetchone()
    return row["lag_s"] if row else None


async def ok_holders(pool: AsyncConnectionPool, image_id: str) -> list[str]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT node_id FROM replicas WHERE image_id = %s AND state = 'ok'", (image_id,)
        )
        return [row["node_id"] for row in await cur.fetchall()]


async def pending_for_node(pool: AsyncConnectionPool, node_id: str, older_than_s: float,
                           limit: int = 200) -> list[dict[str, Any]]:
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
