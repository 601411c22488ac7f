"""SQL for deletes: the tombstone and the per-member delete outbox (`deletions`)."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from common.db import audit
from common.errors import NotFound


async def owner_of(pool: AsyncConnectionPool, image_id: str) -> dict[str, Any]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT status, visibility, owner_key_id, set_id FROM images WHERE image_id = %s", (image_id,)
        )
        row = await cur.fetchone()
    if row is None:
        raise NotFound("no such image")
    return row


async def tombstone(
    pool: AsyncConnectionPool,
    image_id: str,
    *,
    actor_key_id: str | None = None,
    actor_app_id: str | None = None,
    client_ip: str | None = None,
) -> dict[str, Any] | None:
    """One transaction: image `deleted`, a delete row for every member of its set (down ones included, so
    they catch up), its replica rows gone (no URL points anywhere any more). Returns the set and the
    members' base URLs, or None when it was already deleted (idempotent)."""
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute("SELECT status, set_id FROM images WHERE image_id = %s FOR UPDATE", (image_id,))
        row = await cur.fetchone()
        if row is None:
            raise NotFound("no such image")
        if row["status"] == "deleted":
            return None
        await conn.execute("UPDATE images SET status = 'deleted', deleted_at = now() WHERE image_id = %s", (image_id,))
        await conn.execute(
            "INSERT INTO deletions (image_id, node_id)"
            " SELECT %s, node_id FROM nodes WHERE set_id = %s"
            " UNION SELECT image_id, node_id FROM replicas WHERE image_id = %s ON CONFLICT DO NOTHING",
            (image_id, row["set_id"], image_id),
        )
        await conn.execute("DELETE FROM replicas WHERE image_id = %s", (image_id,))
        await audit.record(
            conn,
            "image.delete",
            app_id=actor_app_id,
            key_id=actor_key_id,
            image_id=image_id,
            client_ip=client_ip,
            detail={"set_id": row["set_id"]},
        )
        cur = await conn.execute(
            "SELECT n.base_url FROM deletions d JOIN nodes n USING (node_id) WHERE d.image_id = %s", (image_id,)
        )
        urls = [r["base_url"] for r in await cur.fetchall()]
    return {"set_id": row["set_id"], "base_urls": urls}


async def pending_for_node(pool: AsyncConnectionPool, node_id: str, limit: int = 500) -> list[str]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT image_id FROM deletions WHERE node_id = %s ORDER BY created_at LIMIT %s", (node_id, limit)
        )
        return [r["image_id"] for r in await cur.fetchall()]


async def mark_done(pool: AsyncConnectionPool, image_id: str, node_id: str) -> None:
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM deletions WHERE image_id = %s AND node_id = %s", (image_id, node_id))
