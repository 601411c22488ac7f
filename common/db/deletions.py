"""SQL for deletes: the tombstone and the per-member delete outbox (`deletions`)."""

from __future__ import annotations

from typing import TypedDict

from common.db import audit
from common.db.rows import Pool, fetch_all, fetch_one
from common.errors import NotFound


class OwnerRow(TypedDict):
    status: str
    visibility: str
    owner_key_id: str | None
    app_id: str | None
    set_id: str


class LockedImageRow(TypedDict):
    status: str
    set_id: str


class BaseUrlRow(TypedDict):
    base_url: str


class ImageIdRow(TypedDict):
    image_id: str


class Tombstoned(TypedDict):
    """What ``tombstone`` did: the image's set, and the base URLs of the members that must remove its files."""

    set_id: str
    base_urls: list[str]


async def owner_of(pool: Pool, image_id: str) -> OwnerRow:
    row = await fetch_one(
        pool,
        OwnerRow,
        "SELECT status, visibility, owner_key_id, app_id, set_id FROM images WHERE image_id = %s",
        (image_id,),
    )
    if row is None:
        raise NotFound("no such image")
    return row


async def tombstone(
    pool: Pool,
    image_id: str,
    *,
    actor_key_id: str | None = None,
    actor_app_id: str | None = None,
    client_ip: str | None = None,
) -> Tombstoned | None:
    """One transaction: image `deleted`, a delete row for every member of its set (down ones included, so
    they catch up), its replica rows gone (no URL points anywhere any more). Returns the set and the
    members' base URLs, or None when it was already deleted (idempotent)."""
    async with pool.connection() as conn, conn.transaction():
        row = await fetch_one(
            conn, LockedImageRow, "SELECT status, set_id FROM images WHERE image_id = %s FOR UPDATE", (image_id,)
        )
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
        urls = await fetch_all(
            conn,
            BaseUrlRow,
            "SELECT n.base_url FROM deletions d JOIN nodes n USING (node_id) WHERE d.image_id = %s",
            (image_id,),
        )
    return {"set_id": row["set_id"], "base_urls": [r["base_url"] for r in urls]}


async def pending_for_node(pool: Pool, node_id: str, limit: int = 500) -> list[str]:
    rows = await fetch_all(
        pool,
        ImageIdRow,
        "SELECT image_id FROM deletions WHERE node_id = %s ORDER BY created_at LIMIT %s",
        (node_id, limit),
    )
    return [r["image_id"] for r in rows]


async def mark_done(pool: Pool, image_id: str, node_id: str) -> None:
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM deletions WHERE image_id = %s AND node_id = %s", (image_id, node_id))
