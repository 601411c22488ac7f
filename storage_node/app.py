"""A storage node's aiohttp app: AppKeys, routes, middleware, and resources opened in cleanup_ctx. The composition
root of a node process (``replicator.node_root``) adds the in-process replicator to it.

A node runs as one process or as ``node.workers`` sharing its port (``storage_node.worker_reports.Role``): each
serves (reads, uploads, peer copies, variant builds with its share of ``node.render_threads``); the primary alone
counts the disk, registers the node, beats, processes uploads, sweeps callbacks and runs the tier manager (and, in
``replicator.node_root``, the replicator and the scrubber). ``storage_node.siblings`` keeps their memories true."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
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
from storage_node.commits import UploadCommits
from storage_node.gate import ServeGate
from storage_node.heartbeat import Heartbeats, NodeStatus
from storage_node.hotlink import HotlinkGuard
from storage_node.inflight import count_in_flight
from storage_node.integrity import Integrity
from storage_node.objects.store import Store
from storage_node.process import Processor
from storage_node.publisher import Publisher
from storage_node.ready_marks import check_ready_marks
from storage_node.render import Renderer, RenderOptions, configure_process
from storage_node.routes import add_routes
from storage_node.siblings import Siblings
from storage_node.tiers import TierManager
from storage_node.validate import restrict_loaders
from storage_node.worker_reports import Role

# Set by the parent of a node's workers (``minicdn.runner``): prometheus_client's multiprocess mode, every process
# writing its metrics there, so that /metrics on any of them shows the whole node.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# How often cached descriptors of files unlinked by another process (no news of it) are closed, freeing their space.
OPEN_FILES_SWEEP_S = 10.0


def create_app(settings: Settings, role: Role | None = None) -> web.Application:
    """The app of one node process: the node's only one unless ``role`` says otherwise."""
    require_node(settings)
    role = role or Role()
    restrict_loaders()  # only the loaders of accepted formats, and none libvips considers unsafe
    configure_process()
    node = settings.node
    metrics = NodeMetrics(HttpMetrics("storage-node"), node.node_id, node.region, node.set_id)
    if not role.alone and os.environ.get(METRICS_DIR_ENV):
        metrics.http.expose_processes(os.environ[METRICS_DIR_ENV])
    middlewares = [
        count_in_flight,  # outermost: a stopping node waits for every request it has begun
        request_id_middleware,
        make_error_middleware(metrics.http),
        make_header_limit_middleware(settings.http),
        cors.refuse_foreign_origins,
    ]
    app = web.Application(middlewares=middlewares, client_max_size=1024**2, handler_args=handler_args(settings.http))
    hardening.apply(app)
    app[keys.SETTINGS] = settings
    app[keys.ROLE] = role
    app[keys.METRICS] = metrics
    app[keys.STATUS] = NodeStatus()
    app[keys.STORE] = Store(
        node.data_dir,
        node.capacity_bytes,
        cold_dir=node.cold_dir,
        cold_capacity_bytes=node.cold_capacity_bytes,
        open_files=node.fd_cache_size,
    )
    metrics.http.install(app)
    add_routes(app)
    cors.install(app)
    app.cleanup_ctx.append(_resources)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings, store, role = app[keys.SETTINGS], app[keys.STORE], app[keys.ROLE]
    counted_at = time.time()
    if role.primary:  # the others never count the disk: their store's figures are what they changed (reported)
        await asyncio.to_thread(store.prepare, empty_tmp=role.alone)  # else their parent emptied tmp/ before them
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
        "worker": role.worker,
    }
    async with contextlib.AsyncExitStack() as stack:
        pool = app[keys.POOL] = await stack.enter_async_context(open_pool(settings.database))
        if role.primary:
            await db_nodes.register_node(pool, settings.node, __version__)
        app[keys.COMMITS] = UploadCommits(node.node_id, pool, store, app[keys.METRICS].stages)
        integrity = app[keys.INTEGRITY] = Integrity(store, pool, node.node_id, app[keys.METRICS])
        await integrity.load_known()  # copies already `corrupt` here stay unserved across a restart
        bus = app[keys.BUS] = await stack.enter_async_context(open_bus(settings.nats, settings.node.node_id))
        publisher = app[keys.PUBLISHER] = Publisher(bus)
        stack.push_async_callback(publisher.close)  # before the bus closes (the stack unwinds in reverse)
        renderer = app[keys.RENDERER] = Renderer(
            store,
            # The node's builders shared out among its processes (memory stays bounded), at least one each.
            math.ceil((settings.node.render_threads or os.cpu_count() or 2) / role.workers),
            RenderOptions.from_settings(settings.pipeline),
            app[keys.METRICS],
            memory_mb=settings.pipeline.worker_memory_mb,
            timeout_s=settings.pipeline.job_timeout_s,
        )
        stack.push_async_callback(renderer.close)
        callbacks = app[keys.CALLBACKS] = CallbackOutbox(settings, pool)
        stack.push_async_callback(callbacks.close)
        callbacks.start(sweep=role.primary)  # delivers what a stop left pending, first
        gate = app[keys.GATE] = ServeGate(pool, store)
        hotlink = app[keys.HOTLINK] = HotlinkGuard(pool, settings.http.hotlink_refresh_s)
        if node.published_tree:  # an app that gains an allowlist: none of what is linked may be served by nginx now
            hotlink.on_newly_restricted = store.published.clear
        await hotlink.reload()
        hotlink_task = asyncio.create_task(hotlink.run(), name="hotlink-reload")
        stack.push_async_callback(cancel_all, [hotlink_task])
        processor = app[keys.PROCESSOR] = Processor(settings, pool, store, bus, callbacks)
        processor.metrics = app[keys.METRICS]
        processor.stages = app[keys.METRICS].stages
        processor.integrity = integrity
        stack.push_async_callback(processor.close)
        heartbeats = app[keys.HEARTBEATS] = Heartbeats(settings, store, pool, bus, app[keys.STATUS], app[keys.METRICS])
        heartbeats.backlog = processor.backlog
        siblings = app[keys.SIBLINGS] = Siblings(
            settings, role, store, gate, bus, app[keys.METRICS], app[keys.STATUS], processor.submit
        )
        if role.primary:
            siblings.count_from(counted_at, app[keys.METRICS], app[keys.STATUS])
        await siblings.start()
        stack.push_async_callback(siblings.stop)
        if role.primary:  # elsewhere the processor only probes uploads (its sandbox), and never beats
            marks = asyncio.create_task(check_ready_marks(pool, store, node.node_id), name="ready-marks")
            stack.push_async_callback(cancel_all, [marks])
            processor.start()
            heartbeats.start()
            stack.push_async_callback(heartbeats.stop)

        async def report_variant_bytes(changed: dict[str, int]) -> None:
            await db_replicas.record_variant_bytes(pool, node.node_id, changed)

        stack.callback(store.open_files.clear)  # last: no response sends any more
        sweep = asyncio.create_task(store.open_files.sweep_forever(OPEN_FILES_SWEEP_S), name="open-files-sweep")
        stack.push_async_callback(cancel_all, [sweep])
        tiers = app[keys.TIERS] = TierManager(store, settings.tiers, app[keys.METRICS], report_variant_bytes)
        if role.primary:
            stack.push_async_callback(cancel_all, [asyncio.create_task(tiers.run_forever(), name="tiers")])
        yield
