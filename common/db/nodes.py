"""SQL for nodes and sets: registration, heartbeats, listing."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict

import psycopg.errors
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from common.config import NodeSettings
from common.db.rows import Pool, fetch_all, fetch_one

NODE_COLUMNS = (
    "n.node_id, n.region, n.set_id, n.base_url, n.lat, n.lon, n.capacity_bytes, n.used_bytes, n.free_bytes,"
    " n.objects, n.state, n.last_heartbeat, n.version, s.state AS set_state, n.tiers, n.variant_bytes, n.filesystems,"
    " extract(epoch FROM now() - n.last_heartbeat)::float8 AS heartbeat_age_s,"
    " extract(epoch FROM now() - n.stopping_at)::float8 AS stopping_age_s"
)


class NodeRow(TypedDict):
    """A node with its set's state (``NODE_COLUMNS``)."""

    node_id: str
    region: str
    set_id: str
    base_url: str
    lat: float
    lon: float
    capacity_bytes: int
    used_bytes: int
    free_bytes: int
    objects: int
    state: str
    last_heartbeat: datetime | None
    version: str
    set_state: str
    tiers: dict[str, dict[str, int]]  # per storage tier: capacity, used, free bytes and originals
    variant_bytes: int
    filesystems: dict[str, dict[str, int]]  # "<machine>:<st_dev>" -> total and free bytes (migration 011)
    heartbeat_age_s: float | None  # None until its first heartbeat
    stopping_age_s: float | None  # since it announced it is stopping; None when running (migration 012)


class NodeSetRow(TypedDict):
    set_id: str
    state: str


class NodeStateRow(TypedDict):
    state: str


class SlotTaken(RuntimeError):
    """The set already has a live member in this node's region (replace it first)."""


async def register_node(pool: Pool, node: NodeSettings, version: str) -> int:
    """Create the node's set (open) if new, then insert or refresh the node row. A node new to a set that
    already holds images gets a `pending` replica row for each (backfill); returns how many."""
    try:
        async with pool.connection() as conn, conn.transaction():
            return await _register(conn, node, version)
    except psycopg.errors.UniqueViolation:
        raise SlotTaken(
            f"set {node.set_id} already has a live member in {node.region}: "
            f"run `minicdn node replace <old> --with {node.node_id}` first"
        ) from None


async def _register(conn: AsyncConnection[Any], node: NodeSettings, version: str) -> int:
    await conn.execute("INSERT INTO sets (set_id) VALUES (%s) ON CONFLICT DO NOTHING", (node.set_id,))
    before = await fetch_one(conn, NodeSetRow, "SELECT set_id, state FROM nodes WHERE node_id = %s", (node.node_id,))
    await conn.execute(
        "INSERT INTO nodes (node_id, region, set_id, base_url, lat, lon, capacity_bytes, version)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (node_id) DO UPDATE SET region = EXCLUDED.region, set_id = EXCLUDED.set_id,"
        " base_url = EXCLUDED.base_url, lat = EXCLUDED.lat, lon = EXCLUDED.lon,"
        " capacity_bytes = EXCLUDED.capacity_bytes, version = EXCLUDED.version, stopping_at = NULL",
        (node.node_id, node.region, node.set_id, node.base_url, node.lat, node.lon, node.capacity_bytes, version),
    )
    if before is None or before["set_id"] != node.set_id:
        return await join_set(conn, node.node_id, node.set_id)
    return 0


async def record_heartbeat(
    pool: Pool,
    node_id: str,
    capacity_bytes: int,
    used_bytes: int,
    free_bytes: int,
    objects: int,
    tiers: dict[str, dict[str, int]] | None = None,
    variant_bytes: int = 0,
    filesystems: dict[str, dict[str, int]] | None = None,
) -> str | None:
    """Store the usage figures (per tier too); returns the node's state (operators set it in Postgres)."""
    row = await fetch_one(
        pool,
        NodeStateRow,
        "UPDATE nodes SET capacity_bytes = %s, used_bytes = %s, free_bytes = %s, objects = %s,"
        " tiers = %s, variant_bytes = %s, filesystems = %s, last_heartbeat = now() WHERE node_id = %s RETURNING state",
        (
            capacity_bytes,
            used_bytes,
            free_bytes,
            objects,
            Jsonb(tiers or {}),
            variant_bytes,
            Jsonb(filesystems or {}),
            node_id,
        ),
    )
    return row["state"] if row else None


async def record_stopping(pool: Pool, node_id: str) -> None:
    """The node announces it is stopping (cleared when it registers again). clock_timestamp(), not now(): a
    heartbeat transaction still in flight began earlier, so its time stays before the announcement."""
    async with pool.connection() as conn:
        await conn.execute("UPDATE nodes SET stopping_at = clock_timestamp() WHERE node_id = %s", (node_id,))


async def list_nodes(pool: Pool) -> list[NodeRow]:
    return await fetch_all(
        pool, NodeRow, f"SELECT {NODE_COLUMNS} FROM nodes n JOIN sets s USING (set_id) ORDER BY n.node_id"
    )


LIVE_IMAGE = "status IN ('uploaded', 'processing', 'ready', 'quarantined') AND sha256 IS NOT NULL"


async def join_set(conn: AsyncConnection[Any], node_id: str, set_id: str) -> int:
    """Backfill rows: a `pending` replica for this node for every live image of the set it lacks (made due
    at once for the node's sweep)."""
    cur = await conn.execute(
        "INSERT INTO replicas (image_id, node_id, state, created_at)"
        f" SELECT image_id, %s, 'pending', now() - interval '1 hour' FROM images WHERE set_id = %s AND {LIVE_IMAGE}"
        " ON CONFLICT DO NOTHING",
        (node_id, set_id),
    )
    return cur.rowcount
