"""SQL of the upload lifecycle's ends (migration 008): an upload refused at its PUT becomes `rejected`, a ticket
not used before its URL expired becomes `expired` (each with its callback, in the same transaction), and
`expired` and `rejected` rows are removed once their retention has passed. Every statement takes a bounded
batch, locks with SKIP LOCKED and only moves rows that are still in the status it expects, so sweeps running
on several query services at once are safe and a repeated sweep does nothing."""

from __future__ import annotations

from typing import TypedDict

from common.db import callbacks as db_callbacks
from common.db.callbacks import EventRow
from common.db.rows import Pool, fetch_all, fetch_one

# The columns of db_callbacks.EventRow.
_EVENT_COLUMNS = "image_id, status, reason, set_id, callback_url, duplicate_of, format, width, height, sha256, ready_at"
EXPIRED_REASON = "the upload URL expired before an upload"


class ImageIdRow(TypedDict):
    image_id: str


async def reject_upload(pool: Pool, image_id: str, node_id: str, reason: str) -> EventRow | None:
    """A PUT refused for its content (413, 415, 422): the ticket is used up, the image `rejected` with
    ``reason``, and its callback recorded in the same transaction. Only a `requested` (or, for a PUT that began
    before the expiry, `expired`) image placed on ``node_id`` moves; None otherwise."""
    async with pool.connection() as conn, conn.transaction():
        row = await fetch_one(
            conn,
            EventRow,
            "UPDATE images SET status = 'rejected', reason = %s WHERE image_id = %s AND origin_node = %s"
            " AND status IN ('requested', 'expired') RETURNING " + _EVENT_COLUMNS,
            (reason[:500], image_id, node_id),
        )
        if row is not None:
            await db_callbacks.enqueue(conn, row)
        return row


async def expire_due(pool: Pool, limit: int) -> list[EventRow]:
    """Up to ``limit`` `requested` rows whose upload URL has expired become `expired` (index
    `images_requested_expiry`), each with its callback; returns them."""
    async with pool.connection() as conn, conn.transaction():
        rows = await fetch_all(
            conn,
            EventRow,
            "UPDATE images SET status = 'expired', reason = %s WHERE image_id IN ("
            " SELECT image_id FROM images WHERE status = 'requested' AND expires_at < now()"
            " ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED)"
            " AND status = 'requested' RETURNING " + _EVENT_COLUMNS,
            (EXPIRED_REASON, limit),
        )
        for row in rows:
            await db_callbacks.enqueue(conn, row)
        return rows


async def remove_ended(pool: Pool, retention_s: float, limit: int) -> list[str]:
    """Delete up to ``limit`` `expired` and `rejected` rows that ended more than ``retention_s`` ago (index
    `images_ended`); their replica and delete rows go with them (ON DELETE CASCADE), an app's default that
    named one is cleared (ON DELETE SET NULL), and a duplicate's pointer to one is cleared first."""
    async with pool.connection() as conn, conn.transaction():
        ids = [
            r["image_id"]
            for r in await fetch_all(
                conn,
                ImageIdRow,
                "SELECT image_id FROM images WHERE status IN ('expired', 'rejected')"
                " AND ended_at < now() - make_interval(secs => %s) ORDER BY ended_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (retention_s, limit),
            )
        ]
        if ids:
            await conn.execute("UPDATE images SET duplicate_of = NULL WHERE duplicate_of = ANY(%s)", (ids,))
            await conn.execute("DELETE FROM images WHERE image_id = ANY(%s)", (ids,))
        return ids
