"""In-memory node list and health: loaded from Postgres, kept fresh by NATS heartbeats.

URL lookups read only this (no Postgres). A node is healthy when its state serves reads and its last
heartbeat is younger than the timeout.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from psycopg_pool import AsyncConnectionPool

from common import loops
from common.bus import Bus
from common.db import nodes as db_nodes
from common.events import NodeHeartbeat
from common.geo import Point

logger = logging.getLogger(__name__)
SERVING_STATES = ("active", "readonly", "draining")


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    region: str
    set_id: str
    base_url: str
    point: Point
    state: str
    set_state: str
    capacity_bytes: int
    used_bytes: int
    free_bytes: int
    objects: int
    last_seen: float  # time.monotonic() of the last heartbeat; -inf when never seen


class NodeRegistry:
    def __init__(self, heartbeat_timeout_s: float) -> None:
        self.timeout_s = heartbeat_timeout_s
        self.nodes: dict[str, NodeInfo] = {}

    def healthy(self, node: NodeInfo, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return node.state in SERVING_STATES and now - node.last_seen < self.timeout_s

    def heartbeat_age_s(self, node: NodeInfo) -> float | None:
        age = time.monotonic() - node.last_seen
        return None if age == float("inf") else age

    async def reload(self, pool: AsyncConnectionPool) -> None:
        rows = await db_nodes.list_nodes(pool)
        now = time.monotonic()
        fresh = {}
        for r in rows:
            age = r["heartbeat_age_s"]
            seen = now - age if age is not None else float("-inf")
            old = self.nodes.get(r["node_id"])
            if old is not None:
                seen = max(seen, old.last_seen)  # a NATS heartbeat may be newer than the row we read
            fresh[r["node_id"]] = NodeInfo(
                r["node_id"], r["region"], r["set_id"], r["base_url"], Point(r["lat"], r["lon"]), r["state"],
                r["set_state"], r["capacity_bytes"], r["used_bytes"], r["free_bytes"], r["objects"], seen,
            )
        self.nodes = fresh

    def on_heartbeat(self, event: NodeHeartbeat) -> None:
        node = self.nodes.get(event.node_id)
        if node is None:
            return  # a node we have not loaded yet: the next reload brings it
        self.nodes[event.node_id] = replace(
            node, capacity_bytes=event.capacity_bytes, used_bytes=event.used_bytes, free_bytes=event.free_bytes,
            objects=event.objects, last_seen=time.monotonic(),
        )

    async def run(self, pool: AsyncConnectionPool, bus: Bus, refresh_s: float) -> None:
        """Subscribe to heartbeats and reload the table every ``refresh_s`` (new nodes, state changes)."""

        async def on_msg(msg: object) -> None:
            try:
                self.on_heartbeat(NodeHeartbeat.from_json(msg.data))  # type: ignore[attr-defined]
            except (ValueError, TypeError) as exc:
                logger.warning("bad heartbeat: %s", exc)

        sub = await bus.nc.subscribe(bus.subjects.all_heartbeats(), cb=on_msg)
        try:
            while True:
                await loops.sleep(refresh_s)
                try:
                    await self.reload(pool)
                except Exception as exc:
                    loops.raise_if_cancelling()
                    logger.warning("node reload failed: %s", exc)
        finally:
            await sub.unsubscribe()
