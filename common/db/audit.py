"""The audit log: one append-only row per upload request, upload, delete and key change.

Rows are written inside the transaction of the change they describe (when there is one), so an
action and its audit record commit or roll back together.
"""

from __future__ import annotations

from datetime import datetime
from ipaddress import IPv4Address, IPv6Address
from typing import Any, TypedDict

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from common.db.rows import Pool, fetch_all

ACTIONS = ("upload.request", "upload.complete", "image.delete", "key.create", "key.revoke", "app.default_image")


class AuditRow(TypedDict):
    """One ``audit_log`` row (every column)."""

    audit_id: int
    at: datetime
    action: str
    app_id: str | None
    key_id: str | None
    image_id: str | None
    node_id: str | None
    client_ip: IPv4Address | IPv6Address | None  # inet: psycopg loads it as an ipaddress object
    detail: dict[str, Any]


async def record(
    conn: AsyncConnection[Any],
    action: str,
    *,
    app_id: str | None = None,
    key_id: str | None = None,
    image_id: str | None = None,
    node_id: str | None = None,
    client_ip: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one row. Without ``app_id``, the image's app is recorded."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    await conn.execute(
        "INSERT INTO audit_log (action, app_id, key_id, image_id, node_id, client_ip, detail)"
        " VALUES (%s, coalesce(%s, (SELECT app_id FROM images WHERE image_id = %s)), %s, %s, %s, %s, %s)",
        (action, app_id, image_id, key_id, image_id, node_id, client_ip, Jsonb(detail or {})),
    )


_AUDIT_COLUMNS = "audit_id, at, action, app_id, key_id, image_id, node_id, client_ip, detail"


async def recent(pool: Pool, *, image_id: str | None = None, limit: int = 100) -> list[AuditRow]:
    """Newest first; for one image when ``image_id`` is given."""
    if image_id is None:
        return await fetch_all(
            pool, AuditRow, f"SELECT {_AUDIT_COLUMNS} FROM audit_log ORDER BY audit_id DESC LIMIT %s", (limit,)
        )
    return await fetch_all(
        pool,
        AuditRow,
        f"SELECT {_AUDIT_COLUMNS} FROM audit_log WHERE image_id = %s ORDER BY audit_id DESC LIMIT %s",
        (image_id, limit),
    )
