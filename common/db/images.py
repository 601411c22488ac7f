"""SQL for images: create the `requested` row, commit an upload (with its outbox), read status and locations."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict, TypeVar

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from common.db.pipeline import GONE
from common.db.rows import Pool, fetch_all, fetch_one
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
    expires_at: float | None = None  # unix time the upload URL expires (its signed `exp`)


# A ticket whose URL was valid when its PUT began may still complete after the lifecycle sweep expired it.
UPLOADABLE = ("requested", "expired")


async def create_requested(conn: AsyncConnection[Any], img: NewImage) -> None:
    """Insert the `requested` row; the caller owns the transaction (so its audit row commits with it)."""
    await conn.execute(
        "INSERT INTO images (image_id, owner_key_id, status, visibility, filename, max_bytes, set_id,"
        " origin_node, tags, metadata, callback_url, expires_at)"
        " VALUES (%s, %s, 'requested', %s, %s, %s, %s, %s, %s, %s, %s, to_timestamp(%s))",
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
            img.expires_at,
        ),
    )


class UploadStateRow(TypedDict):
    image_id: str
    status: str
    origin_node: str
    set_id: str


async def upload_states(pool: Pool, image_ids: list[str]) -> dict[str, UploadStateRow]:
    """Each image's row as a PUT first reads it (an image without a row is absent)."""
    rows = await fetch_all(
        pool,
        UploadStateRow,
        "SELECT image_id, status, origin_node, set_id FROM images WHERE image_id = ANY(%s)",
        (image_ids,),
    )
    return {row["image_id"]: row for row in rows}


class UploadLockRow(TypedDict):
    image_id: str
    status: str
    set_id: str
    origin_node: str
    owner_key_id: str | None
    visibility: str
    same: str | None  # another live image with these exact bytes held `ok` on this node, to hard-link
    canonical: str | None  # the first image of the same owner with these exact bytes: this one duplicates it


async def lock_for_uploads(conn: AsyncConnection[Any], node_id: str, shas: dict[str, str]) -> dict[str, UploadLockRow]:
    """Inside a transaction: lock the rows of the images ``shas`` names (image id -> the SHA-256 of its uploaded
    bytes), in id order (two transactions never wait on each other in a circle). With each, in the same round
    trip, what its bytes match: an identical copy held here and the owner's earlier upload of them (duplicates
    are reported within an owner only, so an app never learns what another app uploaded). An image without a
    row is absent from the answer; the caller checks each row with ``check_uploadable``."""
    rows = await fetch_all(
        conn,
        UploadLockRow,
        "SELECT i.image_id, i.status, i.set_id, i.origin_node, i.owner_key_id, i.visibility,"
        " (SELECT o.image_id FROM images o JOIN replicas r ON r.image_id = o.image_id AND r.node_id = %(node)s"
        "   WHERE o.sha256 = u.sha AND o.image_id <> i.image_id AND r.state = 'ok' AND o.status <> ALL(%(gone)s)"
        "   ORDER BY o.uploaded_at LIMIT 1) AS same,"
        " (SELECT coalesce(o.duplicate_of, o.image_id) FROM images o"
        "   WHERE o.sha256 = u.sha AND o.image_id <> i.image_id AND o.owner_key_id IS NOT DISTINCT FROM"
        "   i.owner_key_id AND o.status <> ALL(%(gone)s) AND o.status <> 'requested'"
        "   ORDER BY o.uploaded_at LIMIT 1) AS canonical"
        " FROM unnest(%(ids)s::text[], %(shas)s::text[]) AS u(image_id, sha)"
        " JOIN images i ON i.image_id = u.image_id ORDER BY i.image_id FOR UPDATE OF i",
        {"node": node_id, "gone": list(GONE), "ids": list(shas), "shas": list(shas.values())},
    )
    return {row["image_id"]: row for row in rows}


UploadRow = TypeVar("UploadRow", UploadStateRow, UploadLockRow)


def check_uploadable(row: UploadRow | None, node_id: str) -> UploadRow:
    """Only a `requested` image placed on this node may be uploaded (or one the lifecycle sweep expired while a
    PUT that began in time was streaming: the signature said so)."""
    if row is None or row["origin_node"] != node_id:
        raise NotFound("no upload is expected for this image on this node")
    if row["status"] not in UPLOADABLE:
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
    duplicate_of: str | None,
) -> None:
    """Inside the upload transaction: replica `ok` here, `pending` on every other member, image `uploaded`
    (``duplicate_of`` the owner's earlier upload of the same bytes). Both statements are sent in one
    round trip when ``conn`` is in pipeline mode."""
    await conn.execute(
        "UPDATE images SET status = 'uploaded', sha256 = %s, bytes = %s, content_type = %s, format = %s,"
        " width = %s, height = %s, uploaded_at = now(), duplicate_of = coalesce(%s, duplicate_of)"
        " WHERE image_id = %s",
        (sha256, size, content_type, fmt, width, height, duplicate_of, image_id),
    )
    await conn.execute(
        "INSERT INTO replicas (image_id, node_id, state, bytes, verified_at)"
        " SELECT %s, node_id, CASE WHEN node_id = %s THEN 'ok' ELSE 'pending' END,"
        "        CASE WHEN node_id = %s THEN %s::bigint END, CASE WHEN node_id = %s THEN now() END"
        " FROM nodes WHERE set_id = %s AND state <> 'dead'",
        (image_id, node_id, node_id, size, node_id, set_id),
    )


_IMAGE_COLUMNS = (
    "image_id, owner_key_id, app_id, status, reason, visibility, format, content_type, width, height, bytes, sha256,"
    " set_id, tags, metadata, duplicate_of, created_at, uploaded_at, ready_at"
    ", pages, animated, colour_space, exif, had_gps"  # filled in by processing (migration 002)
)


# An ImageRow per image of ``images i`` (the search in common/db/search.py adds its own WHERE and ORDER BY).
IMAGE_SELECT = (
    f"SELECT {_IMAGE_COLUMNS}, coalesce((SELECT json_agg(json_build_object("
    "  'node_id', r.node_id, 'region', n.region, 'state', r.state, 'verified_at', r.verified_at)"
    "  ORDER BY n.region)"
    "  FROM replicas r JOIN nodes n USING (node_id) WHERE r.image_id = i.image_id), '[]') AS replicas,"
    # Bytes stored for the image on every node: each verified original plus the variants nodes report.
    " coalesce((SELECT sum(CASE WHEN r.state = 'ok' THEN coalesce(r.bytes, 0) ELSE 0 END + r.variant_bytes)"
    "  FROM replicas r WHERE r.image_id = i.image_id), 0)::bigint AS stored_bytes"
    " FROM images i"
)


class ReplicaInfo(TypedDict):
    """One element of ``ImageRow.replicas`` (built with json_build_object, so decoded from JSON)."""

    node_id: str
    region: str
    state: str
    verified_at: str | None  # JSON has no timestamp type: Postgres's ISO 8601 text


class ImageRow(TypedDict):
    """``_IMAGE_COLUMNS`` plus the replicas."""

    image_id: str
    owner_key_id: str | None
    app_id: str | None  # the owner key's app (NULL for an image requested without a key)
    status: str
    reason: str | None
    visibility: str
    format: str | None
    content_type: str | None
    width: int | None
    height: int | None
    bytes: int | None
    sha256: str | None
    set_id: str
    tags: list[str]
    metadata: dict[str, Any]
    duplicate_of: str | None
    created_at: datetime
    uploaded_at: datetime | None
    ready_at: datetime | None
    pages: int | None
    animated: bool | None
    colour_space: str | None
    exif: dict[str, Any] | None
    had_gps: bool | None
    replicas: list[ReplicaInfo]
    stored_bytes: int  # originals (ok replicas) plus variants, over every node


async def get_image(pool: Pool, image_id: str) -> ImageRow:
    """The image row with its replicas (node, region, state), for `GET /v1/images/{id}`."""
    row = await fetch_one(pool, ImageRow, IMAGE_SELECT + " WHERE image_id = %s", (image_id,))
    if row is None:
        raise NotFound("no such image")
    return row


class LocationsRow(TypedDict):
    image_id: str
    status: str
    visibility: str
    owner_key_id: str | None
    app_id: str | None  # the owner key's app (NULL for an image requested without a key)
    width: int | None
    height: int | None
    ok_nodes: list[str]


async def locations_of(pool: Pool, image_ids: list[str]) -> list[LocationsRow]:
    """What a URL lookup needs of each image (status, visibility, owner, size, the nodes of its `ok` replicas):
    one indexed query for a first sight or a batch of a reconcile. Unknown ids have no row."""
    return await fetch_all(
        pool,
        LocationsRow,
        "SELECT i.image_id, i.status, i.visibility, i.owner_key_id, i.app_id, i.width, i.height,"
        " coalesce(array_agg(r.node_id ORDER BY r.node_id) FILTER (WHERE r.state = 'ok'), '{}') AS ok_nodes"
        " FROM images i LEFT JOIN replicas r USING (image_id) WHERE i.image_id = ANY(%s) GROUP BY i.image_id",
        (image_ids,),
    )


class VisibilityRow(TypedDict):
    visibility: str


async def is_private(pool: Pool, image_id: str) -> bool:
    """Whether a copy of this image must be kept private (unknown counts as private: fail closed)."""
    row = await fetch_one(pool, VisibilityRow, "SELECT visibility FROM images WHERE image_id = %s", (image_id,))
    return row is None or row["visibility"] != "public"
