"""A node's liveness: heartbeats over NATS and to Postgres, and the announcement that it is stopping.

The two beats run on their own loops and neither waits on the other: a hung or unreachable Postgres does
not delay the NATS beat, and a NATS outage does not stop the row's. The query services count a node alive
while either shows it alive; replicators and nodes answering a miss read the row. Each send is bounded by
``health.heartbeat_timeout_s``: a beat that lands later than that comes too late to keep the node alive.

A beat carries the data directories' capacity/used/free (in all and per tier) and object count, and over
NATS the running totals the dashboard derives rates from.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from common import __version__, loops
from common.bus import Bus
from common.config import Settings
from common.db import nodes as db_nodes
from common.db.rows import Pool
from common.events import NodeHeartbeat
from common.metrics import NodeMetrics
from storage_node.objects.store import Store, Usage

logger = logging.getLogger(__name__)


@dataclass
class NodeStatus:
    """The node process as the heartbeat reports it: its state (operator-set in Postgres, learned from the last
    write), the requests in flight (``storage_node.inflight``), and whether it announced that it is stopping."""

    state: str = "active"
    in_flight: int = 0
    stopping: bool = False
    others_in_flight: int = 0  # in the primary of several processes: theirs (``storage_node.worker_reports``)


class Heartbeats:
    def __init__(
        self, settings: Settings, store: Store, pool: Pool, bus: Bus, status: NodeStatus, metrics: NodeMetrics
    ) -> None:
        self.node = settings.node
        self.bound_s = settings.health.heartbeat_timeout_s
        self.max_backlog = settings.pipeline.max_backlog
        # The processor's (set by the app): uploads waiting to be processed, the oldest one's age.
        self.backlog: Callable[[], tuple[int, float]] = lambda: (0, 0.0)
        self.store, self.pool, self.bus, self.status, self.metrics = store, pool, bus, status, metrics
        self._tasks: list[asyncio.Task[None]] = []
        # Its own thread for statvfs: in the shared default executor a beat would queue behind a burst of
        # fsyncs and renders, and a busy node would look dead exactly when it is working hardest.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="heartbeat")

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop("NATS", self._beat_nats), name="heartbeat-nats"),
            asyncio.create_task(self._loop("Postgres", self._beat_db), name="heartbeat-postgres"),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await loops.cancel_all(tasks)
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def announce_stopping(self) -> None:
        """Stop beating, then tell NATS and Postgres (concurrently) that this node is stopping, so that the query
        services stop handing it out. Returns within ``health.heartbeat_timeout_s`` whatever either does; a
        failure is only logged: without the announcement the node drops out anyway once its last beat is that
        old. Each side waits for its own loop to end first, so no beat follows the announcement (which would
        make the node look alive again), and a Postgres write stuck on a hung server (psycopg takes up to 10 s
        to give up on a cancelled query) cannot hold back the NATS announcement."""
        if self.status.stopping or not self._tasks:
            return
        self.status.stopping = True
        nats_loop, db_loop = self._tasks
        nats_loop.cancel()
        db_loop.cancel()
        sends = {
            "NATS": asyncio.create_task(self._after(nats_loop, self._announce_nats), name="stopping-nats"),
            "Postgres": asyncio.create_task(self._after(db_loop, self._announce_db), name="stopping-postgres"),
        }
        self._tasks = list(sends.values())  # what is still running at clean-up is cancelled there
        await asyncio.wait(self._tasks, timeout=self.bound_s)
        for where, task in sends.items():
            if not task.done():
                logger.warning("announcing the stop over %s: no answer within %gs", where, self.bound_s)
            elif not task.cancelled() and task.exception() is not None:
                logger.warning("announcing the stop over %s failed: %r", where, task.exception())
        logger.info("node %s announced that it is stopping", self.node.node_id)

    @staticmethod
    async def _after(loop: asyncio.Task[None], send: Callable[[], Awaitable[None]]) -> None:
        await loops.cancel_all([loop])
        await send()

    async def _bounded(self, work: Awaitable[None]) -> None:
        async with asyncio.timeout(self.bound_s):
            await work

    async def _loop(self, where: str, beat: Callable[[], Awaitable[None]]) -> None:
        failing = False
        while True:
            try:
                await self._bounded(beat())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS or Postgres down: keep trying, the node keeps serving
                loops.raise_if_cancelling()
                if not failing:  # once per outage, not at every beat
                    logger.warning("heartbeat over %s failing: %r", where, exc)
                failing = True
            else:
                if failing:
                    logger.info("heartbeat over %s back", where)
                failing = False
            await loops.sleep(self.node.heartbeat_interval_s)

    async def _usage(self) -> Usage:
        usage = await asyncio.get_running_loop().run_in_executor(self._thread, self.store.usage)  # statvfs
        self.metrics.set_usage(usage.capacity_bytes, usage.used_bytes, usage.free_bytes, usage.objects)
        return usage

    async def _beat_db(self) -> None:
        usage = await self._usage()
        state = await db_nodes.record_heartbeat(
            self.pool,
            self.node.node_id,
            usage.capacity_bytes,
            usage.used_bytes,
            usage.free_bytes,
            usage.objects,
            _tiers(usage),
            usage.variant_bytes,
            usage.filesystems,
        )
        if state:
            self.status.state = state

    async def _beat_nats(self) -> None:
        await self.bus.publish_core(self.bus.subjects.heartbeat(self.node.node_id), self._event(await self._usage()))

    async def _announce_db(self) -> None:
        await db_nodes.record_stopping(self.pool, self.node.node_id)

    async def _announce_nats(self) -> None:
        event = dataclasses.replace(self._event(await self._usage()), stopping=True)
        await self.bus.publish_core(self.bus.subjects.heartbeat(self.node.node_id), event)
        if self.bus.nc.is_connected:  # out now, not at the next flush of the connection's buffer
            await self.bus.nc.flush()

    def _event(self, usage: Usage) -> NodeHeartbeat:
        metrics = self.metrics
        lag_p50, lag_max = metrics.replication.recent.summary()
        backlog, oldest_s = self.backlog()
        metrics.processing_backlog.set(backlog)
        metrics.processing_backlog_age.set(oldest_s)
        return NodeHeartbeat(
            node_id=self.node.node_id,
            region=self.node.region,
            set_id=self.node.set_id,
            capacity_bytes=usage.capacity_bytes,
            used_bytes=usage.used_bytes,
            free_bytes=usage.free_bytes,
            objects=usage.objects,
            in_flight=self.status.in_flight + self.status.others_in_flight,
            version_str=__version__,
            sent_at=time.time(),
            # Running totals and recent replication lag, from which the dashboard derives rates.
            requests_total=metrics.http.requests_seen,
            bytes_sent_total=metrics.http.bytes_sent,
            uploads_total=metrics.uploads_ok,
            replicated_total=metrics.replication.copied,
            replication_lag_p50_s=lag_p50,
            replication_lag_max_s=lag_max,
            tiers=_tiers(usage),
            variant_bytes=usage.variant_bytes,
            filesystems=usage.filesystems,
            backfilled_total=metrics.replication.backfilled,
            processing_backlog=backlog,
            processing_oldest_s=round(oldest_s, 3),
            max_backlog=self.max_backlog,
        )


def _tiers(usage: Usage) -> dict[str, dict[str, int]]:
    return {name: dataclasses.asdict(t) for name, t in usage.tiers.items()}
