"""SQL of the control plane: node states, set open/closed, usage samples, provisioning events, backlog."""

from __future__ import annotations

import re
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from common.db.nodes import LIVE_IMAGE, NODE_COLUMNS, join_set

CONTROL_COLUMNS = f"{NODE_COLUMNS}, n.state_set_by, n.state_changed_at, n.registered_at"
# An event's finished_at, from its new state (the parameter): set when the state is final.
_FINISHED_AT = "CASE WHEN %s IN ('succeeded', 'failed', 'done') THEN now() END"
__all__ = ["LIVE_IMAGE", "join_set"]  # re-exported: joining a set is a control-plane step too


async def nodes_with_sets(pool: AsyncConnectionPool) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT {CONTROL_COLUMNS} FROM nodes n JOIN sets s USING (set_id) ORDER BY n.set_id, n.region"
        )
        return await cur.fetchall()


async def list_sets(pool: AsyncConnectionPool) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT set_id, state, created_at FROM sets ORDER BY created_at, set_id")
        return await cur.fetchall()


async def set_node_state(pool: AsyncConnectionPool, node_id: str, state: str, set_by: str) -> bool:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE nodes SET state = %s, state_set_by = %s, state_changed_at = now()"
            " WHERE node_id = %s AND (state <> %s OR state_set_by <> %s)",
            (state, set_by, node_id, state, set_by),
        )
        return cur.rowcount > 0


async def set_set_state(pool: AsyncConnectionPool, set_id: str, state: str) -> bool:
    async with pool.connection() as conn:
        cur = await conn.execute("UPDATE sets SET state = %s WHERE set_id = %s AND state <> %s", (state, set_id, state))
        return cur.rowcount > 0


# --- usage samples -------------------------------------------------------------------------------------
async def add_samples(pool: AsyncConnectionPool, rows: list[tuple[str, int, int]], keep_s: float) -> None:
    """Record (node_id, used_bytes, objects) now, and drop samples older than ``keep_s``."""
    async with pool.connection() as conn, conn.transaction():
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO capacity_samples (node_id, used_bytes, objects) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                rows,
            )
        await conn.execute(
            "DELETE FROM capacity_samples WHERE sampled_at < now() - make_interval(secs => %s)", (keep_s,)
        )


async def growth_samples(pool: AsyncConnectionPool, window_s: float) -> dict[str, tuple[float, int, int]]:
    """Per node: (seconds between its oldest and newest sample in the window, oldest used, newest used)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT node_id, extract(epoch FROM max(sampled_at) - min(sampled_at))::float8 AS span_s,"
            " (array_agg(used_bytes ORDER BY sampled_at))[1] AS first_used,"
            " (array_agg(used_bytes ORDER BY sampled_at DESC))[1] AS last_used"
            " FROM capacity_samples WHERE sampled_at > now() - make_interval(secs => %s) GROUP BY node_id",
            (window_s,),
        )
        return {r["node_id"]: (r["span_s"], r["first_used"], r["last_used"]) for r in await cur.fetchall()}


# --- events --------------------------------------------------------------------------------------------
async def record_event(
    pool: AsyncConnectionPool,
    kind: str,
    reason: str,
    *,
    state: str = "done",
    set_id: str | None = None,
    node_id: str | None = None,
    outcome: str | None = None,
    plan: dict[str, Any] | None = None,
    provisioner: str | None = None,
    event_id: int | None = None,
) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO provisioning_events (event_id, kind, set_id, node_id, state, reason, outcome, plan,"
            " provisioner, finished_at) VALUES (coalesce(%s, nextval('provisioning_events_event_id_seq')),"
            " %s, %s, %s, %s, %s, %s, %s, %s,"
            f" {_FINISHED_AT}) RETURNING event_id",
            (
                event_id,
                kind,
                set_id,
                node_id,
                state,
                reason,
                outcome,
                Jsonb(plan) if plan is not None else None,
                provisioner,
                state,
            ),
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row["event_id"])


async def update_event(
    pool: AsyncConnectionPool, event_id: int, state: str, outcome: str | None = None, plan: dict[str, Any] | None = None
) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE provisioning_events SET state = %s, outcome = coalesce(%s, outcome),"
            " plan = coalesce(%s, plan), updated_at = now(),"
            f" finished_at = {_FINISHED_AT} WHERE event_id = %s",
            (state, outcome, Jsonb(plan) if plan is not None else None, state, event_id),
        )


async def in_flight(pool: AsyncConnectionPool) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT *, extract(epoch FROM now() - created_at)::float8 AS age_s FROM provisioning_events"
            " WHERE state IN ('planned', 'running') ORDER BY event_id"
        )
        return await cur.fetchall()


async def recent_events(pool: AsyncConnectionPool, limit: int = 50) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT event_id, kind, set_id, node_id, state, reason, outcome, plan, provisioner, created_at,"
            " finished_at FROM provisioning_events ORDER BY created_at DESC, event_id DESC LIMIT %s",
            (limit,),
        )
        return await cur.fetchall()


async def seconds_since_provisioning(pool: AsyncConnectionPool) -> float:
    """Seconds since the last new set finished provisioning (infinity when none has)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT extract(epoch FROM now() - max(finished_at))::float8 AS s FROM provisioning_events"
            " WHERE kind = 'new_set' AND state = 'succeeded'"
        )
        row = await cur.fetchone()
    return float("inf") if row is None or row["s"] is None else float(row["s"])


async def new_event_id(pool: AsyncConnectionPool) -> int:
    """Reserve an event id first, so a plan can carry it from the moment it is recorded."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT nextval('provisioning_events_event_id_seq') AS id")
        row = await cur.fetchone()
    assert row is not None
    return int(row["id"])


async def next_set_number(conn: AsyncConnection[Any]) -> int:
    # Planned sets count too: a late node of a failed plan must never land in the next plan's set.
    cur = await conn.execute(
        "SELECT set_id FROM sets UNION SELECT set_id FROM provisioning_events"
        " WHERE kind = 'new_set' AND set_id IS NOT NULL"
    )
    numbers = [int(m.group(1)) for r in await cur.fetchall() if (m := re.fullmatch(r"set-(\d+)", r["set_id"]))]
    return max(numbers, default=0) + 1


async def existing_node_ids(pool: AsyncConnectionPool) -> set[str]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT node_id FROM nodes")
        return {r["node_id"] for r in await cur.fetchall()}


# --- backlog, backfill, repair -------------------------------------------------------------------------
async def backlog(pool: AsyncConnectionPool) -> dict[str, dict[str, int]]:
    """Per node, how many replicas wait for a copy, by state (two partial-index scans, never the table)."""
    out: dict[str, dict[str, int]] = {}
    async with pool.connection() as conn:
        for where in ("state = 'pending'", "state IN ('missing', 'corrupt')"):
            cur = await conn.execute(f"SELECT node_id, state, count(*) AS n FROM replicas WHERE {where} GROUP BY 1, 2")
            for r in await cur.fetchall():
                out.setdefault(r["node_id"], {})[r["state"]] = int(r["n"])
    return out


async def under_replicated(pool: AsyncConnectionPool, limit: int = 1000) -> list[dict[str, Any]]:
    """Replicas that are not `ok` (partial indexes), with whether their node is alive."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT r.image_id, r.node_id, r.state, n.state AS node_state FROM replicas r JOIN nodes n USING (node_id)"
            " WHERE r.state = 'pending' UNION ALL"
            " SELECT r.image_id, r.node_id, r.state, n.state FROM replicas r JOIN nodes n USING (node_id)"
            " WHERE r.state IN ('missing', 'corrupt') LIMIT %s",
            (limit,),
        )
        return await cur.fetchall()


async def nudge_repairs(pool: AsyncConnectionPool) -> int:
    """Make every waiting copy due for its node's next sweep at once (pending rows count from created_at)."""
    async with pool.connection() as conn:
        cur = await conn.execute("UPDATE replicas SET created_at = now() - interval '1 hour' WHERE state = 'pending'")
        return cur.rowcount


async def backfill_progress(pool: AsyncConnectionPool, node_id: str) -> dict[str, Any] | None:
    """How far a node is from holding every live image of its set (index scans only)."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT set_id, state FROM nodes WHERE node_id = %s", (node_id,))
        node = await cur.fetchone()
        if node is None:
            return None
        cur = await conn.execute(
            f"SELECT count(*) AS n FROM images WHERE set_id = %s AND {LIVE_IMAGE}", (node["set_id"],)
        )
        expected = (await cur.fetchone() or {"n": 0})["n"]
        cur = await conn.execute(
            "SELECT state, count(*) AS n FROM replicas WHERE node_id = %s AND state = 'pending' GROUP BY 1"
            " UNION ALL SELECT state, count(*) FROM replicas WHERE node_id = %s AND state IN ('missing', 'corrupt')"
            " GROUP BY 1",
            (node_id, node_id),
        )
        waiting = {r["state"]: int(r["n"]) for r in await cur.fetchall()}
    left = sum(waiting.values())
    return {
        "node_id": node_id,
        "set_id": node["set_id"],
        "state": node["state"],
        "expected": int(expected),
        "done": max(int(expected) - left, 0),
        "pending": waiting.get("pending", 0),
        "missing": waiting.get("missing", 0),
        "corrupt": waiting.get("corrupt", 0),
        "complete": left == 0,
    }
