"""A storage node's aiohttp app: AppKeys, routes, middleware, and resources opened in cleanup_ctx. The composition
root of a node process (``replicator.node_root``) adds the in-process replicator to it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from common import __version__, hardening
from common.bus import open_bus
from common.callback_outbox import CallbackOutbox
from common.config import Settings, require_node
from common.db import nodes as db_nodes
from common.db import replicas as db_replicas
from common.db.pool import open_pool
from common.hardening import handler_args, make_header_limit_middleware
from common.httpkit import make_error_middleware
from common.loops import cancel_all
from common.metrics import HttpMetrics, NodeMetrics
from common.reqlog import request_id_middleware
from storage_node import cors, keys
from storage_node.codecs import codec_versions
from storage_node.gate import ServeGate
from storage_node.heartbeat import run_heartbeats
from storage_node.hotlink import HotlinkGuard
from storage_node.objects.store import Store
from storage_node.process import Processor
from storage_node.render import Renderer, RenderOptions, configure_process
from storage_node.routes import add_routes
from storage_node.tiers import TierManager
from storage_node.validate import restrict_loaders


def create_app(settings: Settings) -> web.Application:
    require_node(settings)
    restrict_loaders()  # only the loaders of accepted formats, and none libvips considers unsafe
    configure_process()
    node = settings.node
    metrics = NodeMetrics(HttpMetrics("storage-node"), node.node_id, node.region, node.set_id)
    middlewares = [
        request_id_middleware,
        make_error_middleware(metrics.http),
        make_header_limit_middleware(settings.http),
        cors.refuse_foreign_origins,
    ]
    app = web.Application(middlewares=middlewares, client_max_size=1024**2, handler_args=handler_args(settings.http))
    hardening.apply(app)
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = metrics
    app[keys.STATUS] = keys.NodeStatus()
    app[keys.STORE] = Store(
        node.data_dir, node.capacity_bytes, cold_dir=node.cold_dir, cold_capacity_bytes=node.cold_capacity_bytes
    )
    metrics.http.install(app)
    add_routes(app)
    cors.install(app)
    app.cleanup_ctx.append(_resources)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings, store = app[keys.SETTINGS], app[keys.STORE]
    await asyncio.to_thread(store.prepare)
    # /healthz is polled often: its body (versions read from installed packages and the library) is built once.
    node = settings.node
    codecs = await asyncio.to_thread(codec_versions)
    app[keys.HEALTH] = {
        "status": "ok",
        "component": "storage-node",
        "node_id": node.node_id,
        "region": node.region,
        "version": __version__,
        "libvips": codecs["libvips"],
        "codecs": codecs,
    }
    async with contextlib.AsyncExitStack() as stack:
        pool = app[keys.POOL] = await stack.enter_async_context(open_pool(settings.database))
        await db_nodes.register_node(pool, settings.node, __version__)
        bus = app[keys.BUS] = await stack.enter_async_context(open_bus(settings.nats, settings.node.node_id))
        renderer = app[keys.RENDERER] = Renderer(
            store,
            settings.node.render_threads,
            RenderOptions.from_settings(settings.pipeline),
            app[keys.METRICS],
            memory_mb=settings.pipeline.worker_memory_mb,
            timeout_s=settings.pipeline.job_timeout_s,
        )
        stack.push_async_callback(renderer.close)
        callbacks = app[keys.CALLBACKS] = CallbackOutbox(settings, pool)
        stack.push_async_callback(callbacks.close)
        callbacks.start()  # delivers what a stop left pending, first
        app[keys.GATE] = ServeGate(pool)
        hotlink = app[keys.HOTLINK] = HotlinkGuard(pool, settings.http.hotlink_refresh_s)
        await hotlink.reload()
        hotlink_task = asyncio.create_task(hotlink.run(), name="hotlink-reload")
        stack.push_async_callback(cancel_all, [hotlink_task])
        processor = app[keys.PROCESSOR] = Processor(settings, pool, store, bus, callbacks)
        processor.metrics = app[keys.METRICS]
        stack.push_async_callback(processor.close)
        processor.start()
        heartbeat = asyncio.create_task(
            run_heartbeats(settings.node, store, pool, bus, app[keys.STATUS], app[keys.METRICS]), name="heartbeat"
        )
        stack.push_async_callback(cancel_all, [heartbeat])

        async def report_variant_bytes(changed: dict[str, int]) -> None:
            await db_replicas.record_variant_bytes(pool, node.node_id, changed)

        tiers = app[keys.TIERS] = TierManager(store, settings.tiers, app[keys.METRICS], report_variant_bytes)
        stack.push_async_callback(cancel_all, [asyncio.create_task(tiers.run_forever(), name="tiers")])
        yield
