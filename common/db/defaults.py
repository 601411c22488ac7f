"""SQL of apps' default images (migration 008: ``apps.default_image_id``): read and set an app's default, and
the one query a node makes on a miss to find the default that stands in for a missing image (the rules are
``common.fallback``'s; this query applies the same ones in SQL so a node's 404 path stays one round trip)."""

from __future__ import annotations

from typing import Any, TypedDict

from psycopg import AsyncConnection

from common.db import audit
from common.db.replicas import HOLDER_COLUMNS, HolderRow
from common.db.rows import Pool, fetch_one
from common.fallback import MISSING


class DefaultRow(TypedDict):
    app_id: str
    default_image_id: str | None


class CandidateRow(TypedDict):
    app_id: str | None
    visibility: str
    status: str


class FallbackRow(TypedDict):
    default_image_id: str
    holders: list[HolderRow]  # json_agg of HOLDER_COLUMNS: every node with an `ok` copy, healthy or not


async def get_default(pool: Pool, app_id: str) -> DefaultRow | None:
    return await fetch_one(pool, DefaultRow, "SELECT app_id, default_image_id FROM apps WHERE app_id = %s", (app_id,))


async def candidate(conn: AsyncConnection[Any], image_id: str) -> CandidateRow | None:
    """The image a default is being set to, locked against a concurrent delete until the caller commits."""
    return await fetch_one(
        conn, CandidateRow, "SELECT app_id, visibility, status FROM images WHERE image_id = %s FOR SHARE", (image_id,)
    )


async def set_default(
    conn: AsyncConnection[Any], app_id: str, image_id: str | None, *, key_id: str, client_ip: str | None
) -> None:
    """Inside the caller's transaction (after ``candidate`` checked the image): set or clear the default,
    with its audit row."""
    await conn.execute("UPDATE apps SET default_image_id = %s WHERE app_id = %s", (image_id, app_id))
    await audit.record(
        conn,
        "app.default_image",
        app_id=app_id,
        key_id=key_id,
        image_id=image_id,
        client_ip=client_ip,
        detail={"default_image_id": image_id},
    )


async def fallback_for(pool: Pool, image_id: str, requested_default: str | None) -> FallbackRow | None:
    """The default standing in for ``image_id`` (a public image that is deleted, rejected or expired): the
    request's ``default=`` image when it is a public, ready image of the same app, else the app's own default
    under the same conditions; with its holders. None when nothing falls back (all by primary key)."""
    return await fetch_one(
        pool,
        FallbackRow,
        "SELECT d.image_id AS default_image_id,"
        " (SELECT coalesce(json_agg(h), '[]') FROM (SELECT " + HOLDER_COLUMNS + " FROM replicas r"
        "   JOIN nodes n USING (node_id) WHERE r.image_id = d.image_id AND r.state = 'ok') h) AS holders"
        " FROM images req JOIN apps a ON a.app_id = req.app_id"
        " JOIN images d ON d.image_id = coalesce("
        "   (SELECT p.image_id FROM images p WHERE p.image_id = %(param)s AND p.app_id = req.app_id"
        "    AND p.status = 'ready' AND p.visibility = 'public'), a.default_image_id)"
        " WHERE req.image_id = %(id)s AND req.visibility = 'public' AND req.status = ANY(%(missing)s)"
        " AND d.app_id = req.app_id AND d.status = 'ready' AND d.visibility = 'public' AND d.image_id <> req.image_id",
        {"id": image_id, "param": requested_default, "missing": sorted(MISSING)},
    )
