"""SQL of the control plane: node states, set open/closed, usage samples, provisioning events, backlog,
and the capacity monitor's leader lock."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, TypedDict

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from common.db.nodes import LIVE_IMAGE, NODE_COLUMNS, NodeRow, NodeSetRow, join_set
from common.db.rows import Pool, fetch_all, fetch_one

CONTROL_COLUMNS = f"{NODE_COLUMNS}, n.state_set_by, n.state_changed_at, n.registered_at"
EVENT_COLUMNS = "event_id, kind, set_id, node_id, state, reason, outcome, plan, provisioner, created_at, finished_at"
# An event's finished_at, from its new state (the parameter): set when the state is final.
_FINISHED_AT = "CASE WHEN %s IN ('succeeded', 'failed', 'done') THEN now() END"
__all__ = ["LIVE_IMAGE", "join_set"]  # re-exported: joining a set is a control-plane step too


class ControlNodeRow(NodeRow):
    """A node with its set (``CONTROL_COLUMNS``): who set its state and when."""

    state_set_by: str
    state_changed_at: datetime
    registered_at: datetime


class SetRow(TypedDict):
    set_id: str
    state: str
    created_at: datetime


class EventRow(TypedDict):
    """A control-plane event (``EVENT_COLUMNS``)."""

    event_id: int
    kind: str
    set_id: str | None
    node_id: str | None
    state: str
    reason: str
    outcome: str | None
    plan: dict[str, Any] | None  # a provisioning's Plan.to_dict()
    provisioner: str | None
    created_at: datetime
    finished_at: datetime | None


class InFlightRow(EventRow):
    """A provisioning still `planned` or `running`, with its age."""

    updated_at: datetime
    age_s: float


class UnderReplicatedRow(TypedDict):
    image_id: str
    node_id: str
    state: str
    node_state: str


class BackfillProgress(TypedDict):
    node_id: str
    set_id: str
    state: str
    expected: int
    done: int
    pending: int
    missing: int
    corrupt: int
    complete: bool


class _GrowthRow(TypedDict):
    node_id: str
    span_s: float
    slope: float | None  # bytes per second, least squares over the window's samples (None: one sample)


class _EventIdRow(TypedDict):
    event_id: int


class _SecondsRow(TypedDict):
    s: float | None  # None when no row matched


class _IdRow(TypedDict):
    id: int


class _SetIdRow(TypedDict):
    set_id: str


class _NodeIdRow(TypedDict):
    node_id: str


class _StateCountRow(TypedDict):
    state: str
    n: int


class _NodeStateCountRow(TypedDict):
    node_id: str
    state: str
    n: int


class _CountRow(TypedDict):
    n: int


class _LockRow(TypedDict):
    locked: bool


async def nodes_with_sets(pool: Pool) -> list[ControlNodeRow]:
    return await fetch_all(
        pool,
        ControlNodeRow,
        f"SELECT {CONTROL_COLUMNS} FROM nodes n JOIN sets s USING (set_id) ORDER BY n.set_id, n.region",
    )


async def list_sets(pool: Pool) -> list[SetRow]:
    return await fetch_all(pool, SetRow, "SELECT set_id, state, created_at FROM sets ORDER BY created_at, set_id")


async def set_node_state(pool: Pool, node_id: str, state: str, set_by: str) -> bool:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE nodes SET state = %s, state_set_by = %s, state_changed_at = now()"
            " WHERE node_id = %s AND (state <> %s OR state_set_by <> %s)",
            (state, set_by, node_id, state, set_by),
        )
        return cur.rowcount > 0


async def set_set_state(pool: Pool, set_id: str, state: str) -> bool:
    async with pool.connection() as conn:
        cur = await conn.execute("UPDATE sets SET state = %s WHERE set_id = %s AND state <> %s", (state, set_id, state))
        return cur.rowcount > 0


async def rejoin_set(pool: Pool, node_id: str) -> int:
    """Backfill a node back from `dead` (no rows were made for it meanwhile) in its set; returns how many rows."""
    async with pool.connection() as conn, conn.transaction():
        row = await fetch_one(conn, _SetIdRow, "SELECT set_id FROM nodes WHERE node_id = %s", (node_id,))
        return await join_set(conn, node_id, row["set_id"]) if row else 0


async def retire_node(pool: Pool, node_id: str) -> None:
    """An operator's `dead` for a node being replaced, and its replica rows gone (its replacement backfills
    every image of the set), in one transaction."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "UPDATE nodes SET state = 'dead', state_set_by = 'operator', state_changed_at = now() WHERE node_id = %s",
            (node_id,),
        )
        await conn.execute("DELETE FROM replicas WHERE node_id = %s", (node_id,))


async def dead_unreplaced(pool: Pool, after_s: float) -> list[str]:
    """Nodes the monitor marked `dead` more than ``after_s`` ago whose slot nobody took and whose
    replacement was never attempted (or failed every time)."""
    rows = await fetch_all(
        pool,
        _NodeIdRow,
        "SELECT n.node_id FROM nodes n WHERE n.state = 'dead' AND n.state_set_by = 'auto'"
        " AND n.state_changed_at < now() - make_interval(secs => %s)"
        " AND NOT EXISTS (SELECT 1 FROM nodes m WHERE m.set_id = n.set_id AND m.region = n.region"
        "                 AND m.state <> 'dead')"
        " AND NOT EXISTS (SELECT 1 FROM provisioning_events e WHERE e.kind = 'replace'"
        "                 AND e.node_id = n.node_id AND e.state <> 'failed')",
        (after_s,),
    )
    return [r["node_id"] for r in rows]


# --- the capacity monitor's leader lock ------------------------------------------------------------------
# Both take the leader's own connection (never a pooled one): the lock is session-level and lives exactly as
# long as that connection, so Postgres releases it when the leader dies.
async def try_session_lock(conn: AsyncConnection[Any], key: int) -> bool:
    """Take the session-level advisory lock ``key`` on ``conn`` if nobody holds it."""
    row = await fetch_one(conn, _LockRow, "SELECT pg_try_advisory_lock(%s) AS locked", (key,))
    return bool(row and row["locked"])


async def keep_alive(conn: AsyncConnection[Any]) -> None:
    """Fails when the session (and with it the lock) is gone."""
    await conn.execute("SELECT 1")


# --- usage samples -------------------------------------------------------------------------------------
async def add_samples(pool: Pool, rows: list[tuple[str, int, int]], keep_s: float) -> None:
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


async def growth_samples(pool: Pool, window_s: float) -> dict[str, tuple[float, float | None]]:
    """Per node: (seconds between its oldest and newest sample in the window, the least-squares slope of its
    used bytes over time in bytes/s)."""
    rows = await fetch_all(
        pool,
        _GrowthRow,
        "SELECT node_id, extract(epoch FROM max(sampled_at) - min(sampled_at))::float8 AS span_s,"
        " regr_slope(used_bytes::float8, extract(epoch FROM sampled_at)::float8) AS slope"
        " FROM capacity_samples WHERE sampled_at > now() - make_interval(secs => %s) GROUP BY node_id",
        (window_s,),
    )
    return {r["node_id"]: (r["span_s"], r["slope"]) for r in rows}


# --- events --------------------------------------------------------------------------------------------
async def record_event(
    pool: Pool,
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
    row = await fetch_one(
        pool,
        _EventIdRow,
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
    assert row is not None
    return int(row["event_id"])


async def update_event(
    pool: Pool, event_id: int, state: str, outcome: str | None = None, plan: dict[str, Any] | None = None
) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE provisioning_events SET state = %s, outcome = coalesce(%s, outcome),"
            " plan = coalesce(%s, plan), updated_at = now(),"
            f" finished_at = {_FINISHED_AT} WHERE event_id = %s",
            (state, outcome, Jsonb(plan) if plan is not None else None, state, event_id),
        )


async def in_flight(pool: Pool) -> list[InFlightRow]:
    return await fetch_all(
        pool,
        InFlightRow,
        f"SELECT {EVENT_COLUMNS}, updated_at, extract(epoch FROM now() - created_at)::float8 AS age_s"
        " FROM provisioning_events WHERE state IN ('planned', 'running') ORDER BY event_id",
    )


async def recent_events(pool: Pool, limit: int = 50) -> list[EventRow]:
    return await fetch_all(
        pool,
        EventRow,
        f"SELECT {EVENT_COLUMNS} FROM provisioning_events ORDER BY created_at DESC, event_id DESC LIMIT %s",
        (limit,),
    )


async def seconds_since_provisioning(pool: Pool) -> float:
    """Seconds since the last new set finished provisioning (infinity when none has)."""
    row = await fetch_one(
        pool,
        _SecondsRow,
        "SELECT extract(epoch FROM now() - max(finished_at))::float8 AS s FROM provisioning_events"
        " WHERE kind = 'new_set' AND state = 'succeeded'",
    )
    return float("inf") if row is None or row["s"] is None else float(row["s"])


async def new_event_id(pool: Pool) -> int:
    """Reserve an event id first, so a plan can carry it from the moment it is recorded."""
    row = await fetch_one(pool, _IdRow, "SELECT nextval('provisioning_events_event_id_seq') AS id")
    assert row is not None
    return int(row["id"])


async def next_set_number(conn: AsyncConnection[Any]) -> int:
    # Planned sets count too: a late node of a failed plan must never land in the next plan's set.
    rows = await fetch_all(
        conn,
        _SetIdRow,
        "SELECT set_id FROM sets UNION SELECT set_id FROM provisioning_events"
        " WHERE kind = 'new_set' AND set_id IS NOT NULL",
    )
    numbers = [int(m.group(1)) for r in rows if (m := re.fullmatch(r"set-(\d+)", r["set_id"]))]
    return max(numbers, default=0) + 1


async def existing_node_ids(pool: Pool) -> set[str]:
    return {r["node_id"] for r in await fetch_all(pool, _NodeIdRow, "SELECT node_id FROM nodes")}


# --- backlog, backfill, repair -------------------------------------------------------------------------
async def backlog(pool: Pool) -> dict[str, dict[str, int]]:
    """Per node, how many replicas wait for a copy, by state (two partial-index scans, never the table)."""
    out: dict[str, dict[str, int]] = {}
    async with pool.connection() as conn:
        for where in ("state = 'pending'", "state IN ('missing', 'corrupt')"):
            rows = await fetch_all(
                conn,
                _NodeStateCountRow,
                f"SELECT node_id, state, count(*) AS n FROM replicas WHERE {where} GROUP BY 1, 2",
            )
            for r in rows:
                out.setdefault(r["node_id"], {})[r["state"]] = int(r["n"])
    return out


async def under_replicated(pool: Pool, limit: int = 1000) -> list[UnderReplicatedRow]:
    """Replicas that are not `ok` (partial indexes), with whether their node is alive."""
    return await fetch_all(
        pool,
        UnderReplicatedRow,
        "SELECT r.image_id, r.node_id, r.state, n.state AS node_state FROM replicas r JOIN nodes n USING (node_id)"
        " WHERE r.state = 'pending' UNION ALL"
        " SELECT r.image_id, r.node_id, r.state, n.state FROM replicas r JOIN nodes n USING (node_id)"
        " WHERE r.state IN ('missing', 'corrupt') LIMIT %s",
        (limit,),
    )


async def nudge_repairs(pool: Pool) -> int:
    """Make every waiting copy due for its node's next sweep at once (pending rows count from created_at)."""
    async with pool.connection() as conn:
        cur = await conn.execute("UPDATE replicas SET created_at = now() - interval '1 hour' WHERE state = 'pending'")
        return cur.rowcount


async def backfill_progress(pool: Pool, node_id: str) -> BackfillProgress | None:
    """How far a node is from holding every live image of its set (index scans only)."""
    async with pool.connection() as conn:
        node = await fetch_one(conn, NodeSetRow, "SELECT set_id, state FROM nodes WHERE node_id = %s", (node_id,))
        if node is None:
            return None
        count = await fetch_one(
            conn, _CountRow, f"SELECT count(*) AS n FROM images WHERE set_id = %s AND {LIVE_IMAGE}", (node["set_id"],)
        )
        expected = count["n"] if count else 0
        rows = await fetch_all(
            conn,
            _StateCountRow,
            "SELECT state, count(*) AS n FROM replicas WHERE node_id = %s AND state = 'pending' GROUP BY 1"
            " UNION ALL SELECT state, count(*) FROM replicas WHERE node_id = %s AND state IN ('missing', 'corrupt')"
            " GROUP BY 1",
            (node_id, node_id),
        )
        waiting = {r["state"]: int(r["n"]) for r in rows}
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
