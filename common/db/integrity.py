"""SQL of a node's integrity checks: an image's record (the SHA-256, size and type written at ingest, from which
a lost sidecar is restored) and the replicas of a node already known `corrupt` (remembered at start-up, so a
restarted node does not serve them)."""

from __future__ import annotations

from typing import TypedDict

from common.db.rows import Pool, fetch_all, fetch_one


class RecordRow(TypedDict):
    """sha256, bytes and content_type are recorded together at upload: all three or none are NULL."""

    sha256: str | None
    bytes: int | None
    content_type: str | None
    visibility: str


async def record(pool: Pool, image_id: str) -> RecordRow | None:
    return await fetch_one(
        pool,
        RecordRow,
        "SELECT sha256, bytes, content_type, visibility FROM images WHERE image_id = %s",
        (image_id,),
    )


class ImageIdRow(TypedDict):
    image_id: str


async def corrupt_on_node(pool: Pool, node_id: str) -> list[str]:
    """The images whose replica on ``node_id`` is `corrupt` (partial index `replicas_needs_copy`)."""
    rows = await fetch_all(
        pool,
        ImageIdRow,
        "SELECT image_id FROM replicas WHERE node_id = %s AND state = 'corrupt'",
        (node_id,),
    )
    return [row["image_id"] for row in rows]
