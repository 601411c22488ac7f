"""SQL for images: create the `requested` row, commit an upload (with its outbox), read status and locations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from common.errors import Conflict, NotFound


@dataclass(frozen=True)
class NewImage:
    image_id: str
    owner_key_id: str | None
    set_id: str
    origin_node: str
    max_bytes: int
    visibility: str = "public"
    filename: str | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] | None = None
    callback_url: str | None = None


async def create_requested(conn: AsyncConnection[Any], img: NewImage) -> None:
    """Insert the `requested` row; the caller owns the transaction (so its audit row commits with it)."""
    await conn.execute(
        "INSERT INTO images (image_id, owner_key_id, status, visibility, filename, max_bytes, set_id,"
        " origin_node, tags, metadata, callback_url) VALUES (%s, %s, 'requested', %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            img.image_id,
            img.owner_key_id,
            img.visibility,
            img.filename,
            img.max_bytes,
            img.set_id,
            img.origin_node,
            list(img.tags),
            Jsonb(img.metadata or {}),
            img.callback_url,
        ),
    )


async def upload_state(pool: AsyncConnectionPool, image_id: str) -> dict[str, Any] | None:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT status, origin_node, set_id FROM images WHERE image_id = %s", (image_id,))
        return await cur.fetchone()


async def lock_for_upload(conn: AsyncConnection[Any], image_id: str, node_id: str) -> dict[str, Any]:
    """Inside a transaction: lock the image row; only a `requested` image placed on this node may be uploaded."""
    cur = await conn.execute(
        "SELECT status, set_id, origin_node, owner_key_id, visibility FROM images WHERE image_id = %s FOR UPDATE",
        (image_id,),
    )
    row = await cur.fetchone()
    if row is None or row["origin_node"] != node_id:
        raise NotFound("no upload is expected for this image on this node")
    if row["status"] != "requested":
        raise Conflict("this upload URL has already been used", code="already_uploaded")
    return row


async def mark_uploaded(
    conn: AsyncConnection[Any],
    image_id: str,
    node_id: str,
    set_id: str,
    *,
    sha256: str,
    size: int,
    content_type: str,
    fmt: str,
    width: int,
    height: int,
) -> None:
    """Inside the upload transaction: replica `ok` here, `pending` on every other member, image `uploaded`."""
    await conn.execute(
        "UPDATE images SET status = 'uploaded', sha256 = %s, bytes = %s, content_type = %s, format = %s,"
        " width = %s, height = %s, uploaded_at = now() WHERE image_id = %s",
        (sha256, size, content_type, fmt, width, height, image_id),
    )
    await conn.execute(
        "INSERT INTO replicas (image_id, node_id, state, bytes, verified_at)"
        " SELECT %s, node_id, CASE WHEN node_id = %s THEN 'ok' ELSE 'pending' END,"
        "        CASE WHEN node_id = %s THEN %s::bigint END, CASE WHEN node_id = %s THEN now() END"
        " FROM nodes WHERE set_id = %s AND state <> 'dead'",
        (image_id, node_id, node_id, size, node_id, set_id),
    )


_IMAGE_COLUMNS = (
    "image_id, owner_key_id, status, reason, visibility, format, content_type, width, height, bytes, sha256,"
    " set_id, tags, metadata, duplicate_of, created_at, uploaded_at, ready_at"
    ", pages, animated, colour_space, exif, had_gps"  # filled in by processing (migration 002)
)


async def get_image(pool: AsyncConnectionPool, image_id: str) -> dict[str, Any]:
    """The image row with its replicas (node, region, state), for `GET /v1/images/{id}`."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT {_IMAGE_COLUMNS}, coalesce((SELECT json_agg(json_build_object("
            "  'node_id', r.node_id, 'region', n.region, 'state', r.state, 'verified_at', r.verified_at)"
            "  ORDER BY n.region)"
            "  FROM replicas r JOIN nodes n USING (node_id) WHERE r.image_id = i.image_id), '[]') AS replicas"
            " FROM images i WHERE image_id = %s",
            (image_id,),
        )
        row = await cur.fetchone()
    if row is None:
        raise NotFound("no such image")
    return row


async def get_locations(pool: AsyncConnectionPool, image_id: str) -> dict[str, Any] | None:
    """One indexed query for a URL lookup: status, visibility, size, ok replicas and whether all are ok."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT i.status, i.visibility, i.owner_key_id, i.width, i.height,"
            " coalesce(array_agg(r.node_id) FILTER (WHERE r.state = 'ok'), '{}') AS ok_nodes,"
            " count(r.node_id) FILTER (WHERE r.state <> 'ok') AS not_ok"
            " FROM images i LEFT JOIN replicas r USING (image_id) WHERE i.image_id = %s GROUP BY i.image_id",
            (image_id,),
        )
        return await cur.fetchone()


async def is_private(pool: AsyncConnectionPool, image_id: str) -> bool:
    """Whether a copy of this image must be kept private (unknown counts as private: fail closed)."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT visibility FROM images WHERE image_id = %s", (image_id,))
        row = await cur.fetchone()
    return row is None or row["visibility"] != "public"
