"""Composition root of a stand-alone replicator process: a replicator beside its node (sharing the node's data
directory and settings file), with its own pool, bus connection and /metrics, until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import aiohttp
from aiohttp import web

from common import reqlog
from common.bus import open_bus
from common.config import Settings, require_node
from common.db.pool import open_pool
from common.metrics import HttpMetrics, ReplicationMetrics, StageMetrics
from replicator.consumer import Replicator
from replicator.jobs import ReplicatorContext
from storage_node.objects.store import Store

logger = logging.getLogger(__name__)


def run(settings: Settings) -> None:
    """A replicator beside its node (sharing the node's data directory), until SIGINT/SIGTERM."""
    require_node(settings)
    asyncio.run(_replicator_main(settings))


async def _replicator_main(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    node = settings.node
    # The node's tiers too: a copy it replaces or deletes may lie in the cold directory.
    store = Store(
        node.data_dir, node.capacity_bytes, cold_dir=node.cold_dir, cold_capacity_bytes=node.cold_capacity_bytes
    )
    await asyncio.to_thread(store.objects.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(store.tmp.mkdir, parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        pool = await stack.enter_async_context(open_pool(settings.database))
        bus = await stack.enter_async_context(open_bus(settings.nats, f"replicator-{settings.node.node_id}"))
        session = await stack.enter_async_context(aiohttp.ClientSession())
        metrics = HttpMetrics("replicator")
        ctx = ReplicatorContext(
            settings,
            pool,
            store,
            session,
            metrics=ReplicationMetrics(metrics.registry, settings.node.node_id),
            bus=bus,
            stages=StageMetrics(metrics.registry),
        )
        replicator = Replicator(ctx, bus)
        await replicator.start()
        if settings.replicator.metrics_port:
            await serve_metrics(stack, metrics, settings.node.host, settings.replicator.metrics_port)
        stack.push_async_callback(replicator.stop)
        logger.info("replicator for %s running", settings.node.node_id)
        await stop.wait()


async def serve_metrics(stack: contextlib.AsyncExitStack, metrics: HttpMetrics, host: str, port: int) -> None:
    """/metrics and /healthz for a process that serves nothing else (the stand-alone replicator)."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "component": metrics.component})

    app = web.Application(middlewares=[reqlog.request_id_middleware])
    metrics.install(app)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    await web.TCPSite(runner, host, port).start()
