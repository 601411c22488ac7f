"""SQL for nodes and sets: registration, heartbeats, listing."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from common.config import NodeSettings

NODE_COLUMNS = (
    "n.node_id, n.region, n.set_id, n.base_url, n.lat, n.lon, n.capacity_bytes, n.used_bytes, n.free_bytes,"
    " n.objects, n.state, n.last_heartbeat, n.version, s.state AS set_state,"
    " extract(epoch FROM now() - n.last_heartbeat)::float8 AS heartbeat_age_s"
)


async def register_node(pool: AsyncConnectionPool, node: NodeSettings, version: str) -> None:
    """Create the node's set (open) if new, then insert or refresh the node row."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("INSERT INTO sets (set_id) VALUES (%s) ON CONFLICT DO NOTHING", (node.set_id,))
        await conn.execute(
            "INSERT INTO nodes (node_id, region, set_id, base_url, lat, lon, capacity_bytes, version)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (node_id) DO UPDATE SET region = EXCLUDED.region, set_id = EXCLUDED.set_id,"
            " base_url = EXCLUDED.base_url, lat = EXCLUDED.lat, lon = EXCLUDED.lon,"
            " capacity_bytes = EXCLUDED.capacity_bytes, version = EXCLUDED.version",
            (node.node_id, node.region, node.set_id, node.base_url, node.lat, node.lon, node.capacity_bytes, version),
        )


async def record_heartbeat(pool: AsyncConnectionPool, node_id: str, capacity_bytes: int, used_bytes: int,
                           free_bytes: int, objects: int) -> str | None:
    """Store the usage figures; returns the node's state (operators set it in Postgres)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE nodes SET capacity_bytes = %s, used_bytes = %s, free_bytes = %s, objects = %s,"
            " last_heartbeat = now() WHERE node_id = %s RETURNING state",
            (capacity_bytes, used_bytes, free_bytes, objects, node_id),
        )
        row = await cur.fetchone()
    return row["state"] if row else None


async def list_nodes(pool: AsyncConnectionPool) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        cur = await conn.execute(f"SELECT {NODE_COLUMNS} FROM nodes n JOIN sets s USING (set_id) ORDER BY n.node_id")
        return await cur.fetchall()


async def set_members(pool: AsyncConnectionPool, set_id: str) -> list[str]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT node_id FROM nodes WHERE set_id = %s ORDER BY node_id", (set_id,))
        return [row["node_id"] for row in await cur.fetchall()]
