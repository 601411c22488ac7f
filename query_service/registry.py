"""In-memory node list and health: loaded from Postgres, kept fresh by NATS heartbeats.

URL lookups read only this (no Postgres). A node is healthy when it is by the one definition in
``common.holders`` (its state serves reads, it has not announced that it is stopping, its last heartbeat is
younger than the timeout) and -- once its heartbeats have lapsed -- it has heartbeaten without a gap for
``recover_s``. That hysteresis is this service's own damping on top: a flapping node is not handed to
clients, nor repaired, at every beat.

Liveness comes two ways, and either keeps a node alive: its NATS heartbeats, and its row's heartbeat, read at
every reload (``query.node_refresh_s``). The last heartbeat is the later of the two, so a NATS outage (the row
still fresh) or a Postgres outage (the reload failing, NATS beats arriving) leaves healthy nodes healthy.
The announcement that a node is stopping also comes both ways; it holds until the node beats again (a restart).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

from common import holders, loops
from common.bus import Bus
from common.db import nodes as db_nodes
from common.db.rows import Pool
from common.events import NodeHeartbeat
from common.geo import Point

logger = logging.getLogger(__name__)


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
    # Per storage tier (hot; cold when the node has one) and the bytes of its variant cache.
    tiers: dict[str, dict[str, int]] = field(default_factory=dict, compare=False)
    variant_bytes: int = 0
    filesystems: dict[str, dict[str, int]] = field(default_factory=dict, compare=False)
    stopped_at: float = float("-inf")  # time.monotonic() of its latest announcement that it is stopping
    # From its NATS heartbeats only (the table has neither): uploads it has not processed yet, and its bound.
    processing_backlog: int = 0
    max_backlog: int = 0


def over_backlog(node: NodeInfo) -> bool:
    """It asks for no new uploads until processing catches up (``pipeline.max_backlog``)."""
    return 0 < node.max_backlog <= node.processing_backlog


def is_stopping(node: NodeInfo) -> bool:
    """It announced that it is stopping and has not heartbeaten since (a restarted node beats again)."""
    return node.stopped_at != float("-inf") and node.stopped_at >= node.last_seen


@dataclass
class Health:
    """Hysteresis state of one node as this process sees it."""

    up: bool
    back_since: float | None = None  # first heartbeat after a gap (while not yet `up` again)
    changed_at: float = 0.0
    flaps: int = 0  # times it went down


class NodeRegistry:
    def __init__(self, heartbeat_timeout_s: float, recover_s: float = 0.0) -> None:
        self.timeout_s = heartbeat_timeout_s
        self.recover_s = recover_s
        self.nodes: dict[str, NodeInfo] = {}
        self._health: dict[str, Health] = {}

    def _observe(self, node: NodeInfo, now: float) -> Health:
        """Advance the node's up/down state machine to ``now``; returns it."""
        fresh = holders.is_fresh(now - node.last_seen, self.timeout_s)
        h = self._health.get(node.node_id)
        if h is None:  # first sight: trust what the table says, no waiting at start-up
            h = self._health[node.node_id] = Health(up=fresh, changed_at=now)
        elif h.up and not fresh:
            h.up, h.back_since, h.changed_at, h.flaps = False, None, now, h.flaps + 1
            logger.warning("node %s unhealthy: no heartbeat for %.1fs", node.node_id, now - node.last_seen)
        elif not h.up and fresh:
            if h.back_since is None:
                h.back_since = node.last_seen
            if now - h.back_since >= self.recover_s:
                h.up, h.back_since, h.changed_at = True, None, now
                logger.info("node %s healthy again", node.node_id)
        elif not h.up:
            h.back_since = None
        return h

    def healthy(self, node: NodeInfo, now: float | None = None) -> bool:
        # Only freshness is damped: a change of state (to `dead`, or back) and a stop take effect at once.
        now = time.monotonic() if now is None else now
        return holders.serves_reads(node.state) and not is_stopping(node) and self._observe(node, now).up

    def health(self, node: NodeInfo) -> Health:
        return self._observe(node, time.monotonic())

    def heartbeat_age_s(self, node: NodeInfo) -> float | None:
        age = time.monotonic() - node.last_seen
        return None if age == float("inf") else age

    async def reload(self, pool: Pool) -> None:
        rows = await db_nodes.list_nodes(pool)
        now = time.monotonic()
        fresh = {}
        for r in rows:
            seen, stopped = _since(now, r["heartbeat_age_s"]), _since(now, r["stopping_age_s"])
            old = self.nodes.get(r["node_id"])
            if old is not None:
                self._observe(old, now)  # notice a gap before a newer heartbeat in the row ends it
                # NATS may have brought a newer heartbeat than the row we read, or the stop the row lacks
                # (Postgres down when the node announced it; or a restart cleared it).
                seen, stopped = max(seen, old.last_seen), max(stopped, old.stopped_at)
            fresh[r["node_id"]] = NodeInfo(
                r["node_id"],
                r["region"],
                r["set_id"],
                r["base_url"],
                Point(r["lat"], r["lon"]),
                r["state"],
                r["set_state"],
                r["capacity_bytes"],
                r["used_bytes"],
                r["free_bytes"],
                r["objects"],
                seen,
                r["tiers"],
                r["variant_bytes"],
                r["filesystems"],
                stopped,
                old.processing_backlog if old is not None else 0,
                old.max_backlog if old is not None else 0,
            )
        self.nodes = fresh

    def on_heartbeat(self, event: NodeHeartbeat) -> None:
        node = self.nodes.get(event.node_id)
        if node is None:
            return  # a node we have not loaded yet: the next reload brings it
        now = time.monotonic()
        self._observe(node, now)  # notice a gap before this beat ends it
        if event.stopping:
            logger.info("node %s is stopping", event.node_id)
        self.nodes[event.node_id] = replace(
            node,
            capacity_bytes=event.capacity_bytes,
            used_bytes=event.used_bytes,
            free_bytes=event.free_bytes,
            objects=event.objects,
            # Its last word is not a sign of life: the node is on its way out.
            last_seen=node.last_seen if event.stopping else now,
            stopped_at=now if event.stopping else node.stopped_at,
            tiers=event.tiers if event.tiers is not None else node.tiers,
            variant_bytes=event.variant_bytes,
            filesystems=event.filesystems if event.filesystems is not None else node.filesystems,
            processing_backlog=event.processing_backlog,
            max_backlog=event.max_backlog,
        )

    async def run(self, pool: Pool, bus: Bus, refresh_s: float) -> None:
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
                    for node in list(self.nodes.values()):
                        self._observe(node, time.monotonic())
                    await self.reload(pool)
                except Exception as exc:
                    loops.raise_if_cancelling()
                    logger.warning("node reload failed: %s", exc)
        finally:
            await sub.unsubscribe()


def _since(now: float, age_s: float | None) -> float:
    """The monotonic time ``age_s`` ago (an age on the database's clock); -inf for never."""
    return now - age_s if age_s is not None else float("-inf")
