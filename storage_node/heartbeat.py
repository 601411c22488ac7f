"""Periodic heartbeat: the data directories' capacity/used/free (in all and per tier) and object count, to Postgres
and NATS."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from common import __version__, loops
from common.bus import Bus
from common.config import NodeSettings
from common.db import nodes as db_nodes
from common.db.rows import Pool
from common.events import NodeHeartbeat
from common.metrics import NodeMetrics
from storage_node.keys import NodeStatus
from storage_node.objects.store import Store

logger = logging.getLogger(__name__)


async def beat_once(
    node: NodeSettings, store: Store, pool: Pool, bus: Bus, status: NodeStatus, metrics: NodeMetrics
) -> None:
    usage = await asyncio.to_thread(store.usage)
    metrics.set_usage(usage.capacity_bytes, usage.used_bytes, usage.free_bytes, usage.objects)
    tiers = {name: dataclasses.asdict(t) for name, t in usage.tiers.items()}
    state = await db_nodes.record_heartbeat(
        pool,
        node.node_id,
        usage.capacity_bytes,
        usage.used_bytes,
        usage.free_bytes,
        usage.objects,
        tiers,
        usage.variant_bytes,
        usage.filesystems,
    )
    if state:
        status.state = state
    lag_p50, lag_max = metrics.replication.recent.summary()
    event = NodeHeartbeat(
        node_id=node.node_id,
        region=node.region,
        set_id=node.set_id,
        capacity_bytes=usage.capacity_bytes,
        used_bytes=usage.used_bytes,
        free_bytes=usage.free_bytes,
        objects=usage.objects,
        in_flight=status.in_flight,
        version_str=__version__,
        sent_at=time.time(),
        # Running totals and recent replication lag, from which the dashboard derives rates.
        requests_total=metrics.http.requests_seen,
        bytes_sent_total=metrics.http.bytes_sent,
        uploads_total=metrics.uploads_ok,
        replicated_total=metrics.replication.copied,
        replication_lag_p50_s=lag_p50,
        replication_lag_max_s=lag_max,
        tiers=tiers,
        variant_bytes=usage.variant_bytes,
        filesystems=usage.filesystems,
        backfilled_total=metrics.replication.backfilled,
    )
    await bus.publish_core(bus.subjects.heartbeat(node.node_id), event)


async def run_heartbeats(
    node: NodeSettings, store: Store, pool: Pool, bus: Bus, status: NodeStatus, metrics: NodeMetrics
) -> None:
    while True:
        try:
            await beat_once(node, store, pool, bus, status, metrics)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Postgres or NATS down: keep trying, the node keeps serving
            loops.raise_if_cancelling()
            logger.warning("heartbeat failed: %s", exc)
        await loops.sleep(node.heartbeat_interval_s)
