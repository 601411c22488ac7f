"""Cluster figures for the dashboard and /metrics, gathered off the request path.

Two sources: Postgres (replication backlog, recent control-plane events), read every few seconds by
one background task so that dashboards and scrapes never query the database themselves; and the
nodes' heartbeats (running totals and replication lag), from which per-node rates are derived.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from common import loops
from common.bus import Bus
from common.db import control as db_control
from common.db import stats as db_stats
from common.db.rows import Pool
from common.events import NodeHeartbeat

logger = logging.getLogger(__name__)
RATE_WINDOW_S = 30.0  # rates are averaged over the heartbeats of the last half minute
COUNTERS = ("requests_total", "bytes_sent_total", "uploads_total", "replicated_total", "backfilled_total")


@dataclass
class Backlog:
    pending_by_node: dict[str, int] = field(default_factory=dict)
    oldest_pending_s: float | None = None
    under_replicated: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    event_counts: dict[str, int] = field(default_factory=dict)
    read_at: float = float("-inf")  # time.monotonic() of the last successful read
    backfill_by_node: dict[str, int] = field(default_factory=dict)  # catching up: apart from pending_by_node


@dataclass
class NodeActivity:
    """Rates over the recent window and the last reported replication lag of one node."""

    requests_per_s: float = 0.0
    bytes_per_s: float = 0.0
    uploads_per_s: float = 0.0
    replicated_per_s: float = 0.0
    replication_lag_p50_s: float | None = None
    replication_lag_max_s: float | None = None
    # Of replicated_per_s: copies of images uploaded before the node joined (a new or replacement member
    # catching up), which the lag figures leave out.
    backfilled_per_s: float = 0.0


def rates(samples: deque[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """Per-second increase of each counter between the oldest and newest sample (a restart resets to 0)."""
    if len(samples) < 2:
        return dict.fromkeys(COUNTERS, 0.0)
    (t0, first), (t1, last) = samples[0], samples[-1]
    span = t1 - t0
    if span <= 0:
        return dict.fromkeys(COUNTERS, 0.0)
    return {name: max(last[name] - first[name], 0.0) / span for name in COUNTERS}


CapacityLoader = Callable[[], Awaitable[dict[str, Any]]]


class ClusterStats:
    def __init__(self) -> None:
        self.backlog = Backlog()
        # The capacity monitor's report (growth, days until full, set headroom) as JSON, refreshed with the
        # backlog on every instance (only the leader runs the monitor itself).
        self.capacity: dict[str, Any] | None = None
        self._samples: dict[str, deque[tuple[float, dict[str, float]]]] = {}
        self._lags: dict[str, tuple[float | None, float | None]] = {}

    # --- heartbeats ------------------------------------------------------------------------------------
    def on_heartbeat(self, event: NodeHeartbeat, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        samples = self._samples.setdefault(event.node_id, deque())
        values = {name: float(getattr(event, name)) for name in COUNTERS}
        if samples and any(values[n] < samples[-1][1][n] for n in COUNTERS):
            samples.clear()  # the node restarted: its totals began again at zero
        samples.append((now, values))
        while len(samples) > 2 and now - samples[0][0] > RATE_WINDOW_S:
            samples.popleft()
        self._lags[event.node_id] = (event.replication_lag_p50_s, event.replication_lag_max_s)

    def activity(self, node_id: str, now: float | None = None) -> NodeActivity:
        now = time.monotonic() if now is None else now
        samples = self._samples.get(node_id)
        if samples and now - samples[-1][0] <= RATE_WINDOW_S:
            r = rates(samples)
        else:  # a silent node serves nothing we know of
            r = dict.fromkeys(COUNTERS, 0.0)
        p50, worst = self._lags.get(node_id, (None, None))
        return NodeActivity(
            r["requests_total"],
            r["bytes_sent_total"],
            r["uploads_total"],
            r["replicated_total"],
            p50,
            worst,
            r["backfilled_total"],
        )

    # --- Postgres --------------------------------------------------------------------------------------
    async def refresh(self, pool: Pool, capacity: CapacityLoader | None = None) -> None:
        backlog = await db_stats.replication_backlog(pool)
        events = [dict(e) for e in await db_control.recent_events(pool, limit=20)]
        counts = await db_stats.event_counts(pool)
        self.backlog = Backlog(
            backlog["pending_by_node"],
            backlog["oldest_pending_s"],
            backlog["under_replicated"],
            events,
            counts,
            time.monotonic(),
            backlog["backfill_by_node"],
        )
        if capacity is not None:
            self.capacity = await capacity()

    def as_mapping(self) -> dict[str, Any]:
        """The figures the Prometheus collector exports."""
        b = self.backlog
        age = time.monotonic() - b.read_at
        return {
            "pending_by_node": b.pending_by_node,
            "oldest_pending_s": b.oldest_pending_s,
            "under_replicated": b.under_replicated,
            "event_counts": b.event_counts,
            "age_s": age if age != float("inf") else -1.0,
        }

    async def run(self, pool: Pool, bus: Bus, interval_s: float, capacity: CapacityLoader | None = None) -> None:
        async def on_msg(msg: Any) -> None:
            try:
                self.on_heartbeat(NodeHeartbeat.from_json(msg.data))
            except (ValueError, TypeError) as exc:
                logger.debug("bad heartbeat: %s", exc)

        sub = await bus.nc.subscribe(bus.subjects.all_heartbeats(), cb=on_msg)
        try:
            while True:
                try:
                    await self.refresh(pool, capacity)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # Postgres briefly away: keep the last figures, say how old they are
                    loops.raise_if_cancelling()
                    logger.warning("cluster stats refresh failed: %s", exc)
                await loops.sleep(interval_s)
        finally:
            await sub.unsubscribe()
