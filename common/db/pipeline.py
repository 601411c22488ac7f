"""SQL of the image pipeline: claiming uploads for processing, recording results, rejecting, quarantine
decisions, and the near-duplicate lookup (by perceptual hash through four indexed 16-bit chunks; the exact
one, by SHA-256, is part of the upload's row lock: ``common.db.images.lock_for_uploads``)."""

from __future__ import annotations

import contextlib
from itertools import combinations
from typing import Any, TypedDict

from psycopg.types.json import Jsonb

from common.db import callbacks as db_callbacks
from common.db.callbacks import EventRow
from common.db.rows import Pool, fetch_all, fetch_one

GONE = ("rejected", "deleted")


class ClaimRow(TypedDict):
    """An upload just moved to `processing` (``claim``'s RETURNING)."""

    image_id: str
    owner_key_id: str | None
    set_id: str
    sha256: str | None
    bytes: int | None
    content_type: str | None
    callback_url: str | None
    duplicate_of: str | None


class ImageIdRow(TypedDict):
    image_id: str


class StatusRow(TypedDict):
    status: str


class NearRow(TypedDict):
    canonical: str
    distance: int


def to_signed64(value: int) -> int:
    """Postgres bigint is signed: store the 64-bit hash as its two's-complement value."""
    return value - (1 << 64) if value >= 1 << 63 else value


def chunks(phash: int) -> list[int]:
    """The four 16-bit chunks of a 64-bit hash, most significant first."""
    phash &= (1 << 64) - 1
    return [(phash >> shift) & 0xFFFF for shift in (48, 32, 16, 0)]


def neighbours(chunk: int, radius: int) -> list[int]:
    """Every 16-bit value within ``radius`` bits of ``chunk`` (radius 1: 17 values)."""
    out = [chunk]
    for r in range(1, radius + 1):
        for bits in combinations(range(16), r):
            flipped = chunk
            for bit in bits:
                flipped ^= 1 << bit
            out.append(flipped)
    return out


async def claim(pool: Pool, image_id: str, node_id: str) -> ClaimRow | None:
    """Move an upload placed on this node to `processing` (also re-claims one a crash left there)."""
    return await fetch_one(
        pool,
        ClaimRow,
        "UPDATE images SET status = 'processing' WHERE image_id = %s AND origin_node = %s"
        " AND status IN ('uploaded', 'processing')"
        " RETURNING image_id, owner_key_id, set_id, sha256, bytes, content_type, callback_url, duplicate_of",
        (image_id, node_id),
    )


async def unprocessed(pool: Pool, node_id: str, limit: int = 100) -> list[str]:
    """This node's uploads not yet processed (index `images_unprocessed`)."""
    rows = await fetch_all(
        pool,
        ImageIdRow,
        "SELECT image_id FROM images WHERE origin_node = %s AND status IN ('uploaded', 'processing')"
        " ORDER BY uploaded_at LIMIT %s",
        (node_id, limit),
    )
    return [row["image_id"] for row in rows]


async def finish(
    pool: Pool,
    image_id: str,
    result: dict[str, Any],  # the sandbox's JSON answer, not a row
    *,
    status: str,
    reason: str | None,
    duplicate_of: str | None,
    callback: bool = True,
) -> EventRow | None:
    """Record what processing found and move the image to `ready` or `quarantined` (one transaction with the
    `ready` callback's outbox row). ``callback``: whether the image has a callback URL (its claim said; set with
    the ticket, never changed): without one the update is a single statement, no transaction around it."""
    phash = int(result["phash"])
    exif = dict(result["exif"])
    async with pool.connection() as conn, conn.transaction() if callback else contextlib.nullcontext():
        row = await fetch_one(
            conn,
            EventRow,
            "UPDATE images SET status = %s, reason = %s, format = %s, width = %s, height = %s, pages = %s,"
            " animated = %s, colour_space = %s, exif = %s, had_gps = %s, phash = %s, ph0 = %s, ph1 = %s,"
            " ph2 = %s, ph3 = %s, duplicate_of = coalesce(duplicate_of, %s), processed_at = now(),"
            " ready_at = CASE WHEN %s = 'ready' THEN now() END"
            " WHERE image_id = %s AND status = 'processing' RETURNING " + _EVENT_COLUMNS,
            (
                status,
                reason,
                result["format"],
                result["width"],
                result["height"],
                result["pages"],
                result["animated"],
                result["colour_space"],
                Jsonb(exif),
                exif.get("had_gps"),
                to_signed64(phash),
                *chunks(phash),
                duplicate_of,
                status,
                image_id,
            ),
        )
        if row is not None and status == "ready":
            await db_callbacks.enqueue(conn, row)
        return row


# The columns of db_callbacks.EventRow.
_EVENT_COLUMNS = "image_id, status, reason, set_id, callback_url, duplicate_of, format, width, height, sha256, ready_at"


async def reject(
    pool: Pool, image_id: str, reason: str, from_status: tuple[str, ...] = ("uploaded", "processing")
) -> EventRow | None:
    """One transaction: image `rejected` with its reason, its replica rows gone (nothing left to copy), and its
    callback recorded."""
    async with pool.connection() as conn, conn.transaction():
        row = await fetch_one(
            conn,
            EventRow,
            "UPDATE images SET status = 'rejected', reason = %s, processed_at = now() WHERE image_id = %s"
            " AND status = ANY(%s) RETURNING " + _EVENT_COLUMNS,
            (reason[:500], image_id, list(from_status)),
        )
        if row is not None:
            await conn.execute("DELETE FROM replicas WHERE image_id = %s", (image_id,))
            await db_callbacks.enqueue(conn, row)
        return row


async def approve(pool: Pool, image_id: str) -> EventRow | None:
    """An operator releases a quarantined image (one transaction with its callback)."""
    async with pool.connection() as conn, conn.transaction():
        row = await fetch_one(
            conn,
            EventRow,
            "UPDATE images SET status = 'ready', reason = NULL, ready_at = now() WHERE image_id = %s"
            " AND status = 'quarantined' RETURNING " + _EVENT_COLUMNS,
            (image_id,),
        )
        if row is not None:
            await db_callbacks.enqueue(conn, row)
        return row


async def drop_rejected_replica(pool: Pool, image_id: str, node_id: str) -> None:
    """Forget this node's replica of an image that is `rejected` (its files are gone); any other status keeps it."""
    async with pool.connection() as conn:
        await conn.execute(
            "DELETE FROM replicas WHERE image_id = %s AND node_id = %s"
            " AND EXISTS (SELECT 1 FROM images WHERE image_id = %s AND status = 'rejected')",
            (image_id, node_id, image_id),
        )


async def status_of(pool: Pool, image_id: str) -> str | None:
    row = await fetch_one(pool, StatusRow, "SELECT status FROM images WHERE image_id = %s", (image_id,))
    return row["status"] if row else None


NEAR_SQL = (
    "SELECT coalesce(duplicate_of, image_id) AS canonical,"
    " bit_count((phash # %s)::bit(64)) AS distance FROM images"
    " WHERE (ph0 = ANY(%s) OR ph1 = ANY(%s) OR ph2 = ANY(%s) OR ph3 = ANY(%s))"
    " AND image_id <> %s AND owner_key_id IS NOT DISTINCT FROM %s AND status <> ALL(%s)"
    " AND bit_count((phash # %s)::bit(64)) <= %s ORDER BY distance, uploaded_at LIMIT 1"
)


def near_args(phash: int, max_distance: int, owner_key_id: str | None, image_id: str) -> tuple[Any, ...]:
    """Parameters of NEAR_SQL: candidates come from the four chunk indexes (pigeonhole: some chunk differs
    by at most ``max_distance // 4`` bits), then the exact distance is checked on those rows only."""
    probes = [neighbours(c, max_distance // 4) for c in chunks(phash)]
    signed = to_signed64(phash)
    return (signed, *probes, image_id, owner_key_id, list(GONE), signed, max_distance)


async def near_duplicate(
    pool: Pool, phash: int, max_distance: int, owner_key_id: str | None, image_id: str
) -> str | None:
    """The closest image of the same owner whose perceptual hash is within ``max_distance`` bits."""
    if max_distance < 0:
        return None
    row = await fetch_one(pool, NearRow, NEAR_SQL, near_args(phash, max_distance, owner_key_id, image_id))
    return row["canonical"] if row else None
