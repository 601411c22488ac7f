"""Periodic heartbeat: the data directory's capacity/used/free and object count, to Postgres and NATS."""

from __future__ import annotations

import asyncio
import logging
import time

from psycopg_pool import AsyncConnectionPool

from common import __version__
from common.bus import Bus
from common.config import NodeSettings
from common.db import nodes as db_nodes
from common.events import NodeHeartbeat
from storage_node.keys import NodeMetrics, NodeStatus
from storage_node.store import Store

logger = logging.getLogger(__name__)


async def beat_once(node: NodeSettings, store: Store, pool: AsyncConnectionPool, bus: Bus,
                    status: NodeStatus, metrics: NodeMetrics) -> None:
    usage = await asyncio.to_thread(store.usage)
    for kind in ("capacity", "used", "free"):
        metrics.usage.labels(kind).set(getattr(usage, f"{kind}_bytes"))
    state = await db_nodes.record_heartbeat(pool, node.node_id, usage.capacity_bytes, usage.used_bytes,
                                            usage.free_bytes, usage.objects)
    if state:
        status.state = state
    event = NodeHeartbeat(node_id=node.node_id, region=node.region, set_id=node.set_id,
                          capacity_bytes=usage.capacity_bytes, used_bytes=usage.used_bytes,
                          free_bytes=usage.free_bytes, objects=usage.objects, in_flight=status.in_flight,
                          version_str=__version__, sent_at=time.time())
    await bus.publish_core(bus.subjects.heartbeat(node.node_id), event)


async def run_heartbeats(node: NodeSettings, store: Store, pool: AsyncConnectionPool, bus: Bus,
                         status: NodeStatus, metrics: NodeMetrics) -> None:
    while True:
        try:
            await beat_once(node, store, pool, bus, status, metrics)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Postgres or NATS down: keep trying, the node keeps serving
            logger.warning("heartbeat failed: %s", exc)
        await asyncio.sleep(node.heartbeat_interval_s)
