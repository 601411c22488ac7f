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
    # Pending copies of images uploaded before their node joined (a new or replacement member catching up):
    # not in pending_by_node nor in oldest_pending_s, which measure replication of new uploads.
    backfill_by_node: dict[str, int]


class _PendingRow(TypedDict):
    node_id: str
    n: int
    backfill: int
    oldest_s: float | None


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
            "SELECT r.node_id, count(*) FILTER (WHERE NOT b.backfill) AS n,"
            " count(*) FILTER (WHERE b.backfill) AS backfill,"
            " extract(epoch FROM now() - min(r.created_at) FILTER (WHERE NOT b.backfill))::float8 AS oldest_s"
            " FROM replicas r JOIN nodes n USING (node_id) JOIN images i USING (image_id),"
            " LATERAL (SELECT coalesce(i.uploaded_at < n.registered_at, false) AS backfill) b"
            " WHERE r.state = 'pending' GROUP BY r.node_id",
        )
        under = await fetch_one(
            conn,
            _CountRow,
            "SELECT count(DISTINCT image_id) AS n FROM replicas"
            " WHERE state = 'pending' OR state IN ('missing', 'corrupt')",
        )
    return {
        "pending_by_node": {r["node_id"]: int(r["n"]) for r in rows if r["n"]},
        "oldest_pending_s": max((r["oldest_s"] for r in rows if r["oldest_s"] is not None), default=None),
        "under_replicated": int(under["n"]) if under else 0,
        "backfill_by_node": {r["node_id"]: int(r["backfill"]) for r in rows if r["backfill"]},
    }


async def event_counts(pool: Pool) -> dict[str, int]:
    """Every control-plane event ever recorded, by kind: the same totals on every query-service instance,
    whichever of them (or which CLI call) acted."""
    rows = await fetch_all(pool, _KindCountRow, "SELECT kind, count(*) AS n FROM provisioning_events GROUP BY kind")
    return {r["kind"]: int(r["n"]) for r in rows}
