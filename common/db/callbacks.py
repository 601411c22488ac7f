"""SQL of the callback outbox (table ``callback_outbox``, migration 006): record a delivery in the caller's
transaction, claim due rows with a lease, and record each attempt's outcome."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, TypedDict

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from common.db.rows import Pool, fetch_all


class EventRow(TypedDict):
    """An image's new status as the pipeline's ``UPDATE ... RETURNING`` gives it (``pipeline._EVENT_COLUMNS``)."""

    image_id: str
    status: str
    reason: str | None
    set_id: str
    callback_url: str | None
    duplicate_of: str | None
    format: str | None
    width: int | None
    height: int | None
    sha256: str | None
    ready_at: datetime | None


class ClaimedRow(TypedDict):
    """A delivery taken by ``claim`` (``CLAIM_SQL``'s RETURNING)."""

    delivery_id: uuid.UUID
    image_id: str
    url: str
    body: dict[str, Any]
    attempts: int


def event_body(row: EventRow) -> dict[str, Any]:
    """The callback body for an image row (the sender adds ``sent_at`` to each attempt)."""
    ready_at = row["ready_at"]
    return {
        "event": f"image.{row['status']}",
        "image_id": row["image_id"],
        "status": row["status"],
        "reason": row["reason"],
        "duplicate_of": row["duplicate_of"],
        "format": row["format"],
        "width": row["width"],
        "height": row["height"],
        "sha256": row["sha256"],
        "ready_at": ready_at.isoformat() if ready_at is not None else None,
    }


async def enqueue(conn: AsyncConnection[Any], row: EventRow) -> uuid.UUID | None:
    """Record the callback of ``row``'s new status, if it has a ``callback_url``. Call it inside the transaction
    that records that status: both commit, or neither does."""
    url = row["callback_url"]
    if not url:
        return None
    delivery_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO callback_outbox (delivery_id, image_id, url, body) VALUES (%s, %s, %s, %s)",
        (delivery_id, row["image_id"], url, Jsonb(event_body(row))),
    )
    return delivery_id


CLAIM_SQL = (
    "UPDATE callback_outbox SET attempts = attempts + 1, next_at = now() + make_interval(secs => %s)"
    " WHERE delivery_id IN (SELECT delivery_id FROM callback_outbox WHERE state = 'pending' AND next_at <= now()"
    " ORDER BY next_at LIMIT %s FOR UPDATE SKIP LOCKED)"
    " RETURNING delivery_id, image_id, url, body, attempts"
)


async def claim(pool: Pool, limit: int, lease_s: float) -> list[ClaimedRow]:
    """Take up to ``limit`` due rows (index `callback_outbox_due`) for ``lease_s`` seconds: rows another process is
    claiming right now are skipped, and a claimed row is not due again until its lease ends (a claimer that died
    mid-POST is retried then). Each claim counts as an attempt."""
    if limit <= 0:
        return []
    return await fetch_all(pool, ClaimedRow, CLAIM_SQL, (lease_s, limit))


async def delivered(pool: Pool, delivery_id: uuid.UUID) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE callback_outbox SET state = 'delivered', last_error = NULL, finished_at = now()"
            " WHERE delivery_id = %s",
            (delivery_id,),
        )


async def failed(pool: Pool, delivery_id: uuid.UUID, error: str, retry_in_s: float | None) -> None:
    """An attempt failed: due again in ``retry_in_s`` seconds, or given up (`failed`) when that is None."""
    async with pool.connection() as conn:
        if retry_in_s is None:
            await conn.execute(
                "UPDATE callback_outbox SET state = 'failed', last_error = %s, finished_at = now()"
                " WHERE delivery_id = %s AND state = 'pending'",
                (error[:500], delivery_id),
            )
        else:
            await conn.execute(
                "UPDATE callback_outbox SET next_at = now() + make_interval(secs => %s),"
                " last_error = %s WHERE delivery_id = %s AND state = 'pending'",
                (retry_in_s, error[:500], delivery_id),
            )


async def purge_finished(pool: Pool, older_than_s: float) -> int:
    """Delete delivered and failed rows finished more than ``older_than_s`` ago (index `callback_outbox_finished`)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "DELETE FROM callback_outbox WHERE state <> 'pending' AND finished_at < now() - make_interval(secs => %s)",
            (older_than_s,),
        )
        return cur.rowcount
