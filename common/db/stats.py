"""Cluster-wide figures for the dashboard and the query service's gauges: replication backlog and the
control plane's event totals (its recent events come from common.db.control). The replica queries go
through partial indexes; the events table is small (a row per control-plane action)."""

from __future__ import annotations

from typing import TypedDict

from common.db.rows import Pool, fetch_all, fetch_one


class ReplicationBacklog(TypedDict):
    pending_by_node: dict[str, int]
    oldest_pending_s: float | None  # None when nothing is pending
    under_replicated: int


class _PendingRow(TypedDict):
    node_id: str
    n: int
    oldest_s: float


class _CountRow(TypedDict):
    n: int


class _KindCountRow(TypedDict):
    kind: str
    n: int


async def replication_backlog(pool: Pool) -> ReplicationBacklog:
    """`pending` rows per target node with the oldest one's age, and images with any replica not `ok`.

    `pending` rows are found through the partial index `replicas_pending`; `missing`/`corrupt` rows
    through the control plane's partial index once it exists (they are rare either way).
    """
    async with pool.connection() as conn:
        rows = await fetch_all(
            conn,
            _PendingRow,
            "SELECT node_id, count(*) AS n, extract(epoch FROM now() - min(created_at))::float8 AS oldest_s"
            " FROM replicas WHERE state = 'pending' GROUP BY node_id",
        )
        under = await fetch_one(
            conn,
            _CountRow,
            "SELECT count(DISTINCT image_id) AS n FROM replicas"
            " WHERE state = 'pending' OR state IN ('missing', 'corrupt')",
        )
    return {
        "pending_by_node": {r["node_id"]: int(r["n"]) for r in rows},
        "oldest_pending_s": max((r["oldest_s"] for r in rows), default=None),
        "under_replicated": int(under["n"]) if under else 0,
    }


async def event_counts(pool: Pool) -> dict[str, int]:
    """Every control-plane event ever recorded, by kind: the same totals on every query-service instance,
    whichever of them (or which CLI call) acted."""
    rows = await fetch_all(pool, _KindCountRow, "SELECT kind, count(*) AS n FROM provisioning_events GROUP BY kind")
    return {r["kind"]: int(r["n"]) for r in rows}
