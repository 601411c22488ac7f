"""Cluster-wide figures for the dashboard and the query service's gauges: replication backlog and the
control plane's recent events. Each query goes through a partial index (no table scan)."""

from __future__ import annotations

import logging
from typing import Any

from psycopg_pool import AsyncConnectionPool

logger = logging.getLogger(__name__)


async def replication_backlog(pool: AsyncConnectionPool) -> dict[str, Any]:
    """`pending` rows per target node with the oldest one's age, and images with any replica not `ok`.

    `pending` rows are found through the partial index `replicas_pending`; `missing`/`corrupt` rows
    through the control plane's partial index once it exists (they are rare either way).
    """
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT node_id, count(*) AS n, extract(epoch FROM now() - min(created_at))::float8 AS oldest_s"
            " FROM replicas WHERE state = 'pending' GROUP BY node_id"
        )
        rows = await cur.fetchall()
        cur = await conn.execute(
            "SELECT count(DISTINCT image_id) AS n FROM replicas"
            " WHERE state = 'pending' OR state IN ('missing', 'corrupt')"
        )
        under = await cur.fetchone()
    return {
        "pending_by_node": {r["node_id"]: int(r["n"]) for r in rows},
        "oldest_pending_s": max((r["oldest_s"] for r in rows), default=None),
        "under_replicated": int(under["n"]) if under else 0,
    }


async def recent_events(pool: AsyncConnectionPool, limit: int = 20) -> list[dict[str, Any]]:
    """The newest provisioning/repair events, if the control plane's table exists (else none)."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT to_regclass('provisioning_events') IS NOT NULL AS present")
        row = await cur.fetchone()
        if not row or not row["present"]:
            return []
        try:
            cur = await conn.execute(
                "SELECT to_jsonb(e) AS event FROM provisioning_events e ORDER BY e.created_at DESC LIMIT %s",
                (limit,),
            )
        except Exception as exc:  # a table of another shape: show no events rather than fail the page
            logger.warning("reading provisioning_events failed: %s", exc)
            return []
        return [dict(r["event"]) for r in await cur.fetchall()]
