"""Composition root of the query service: AppKeys, routes, middleware, resources opened in cleanup_ctx.

A query-service process is one of ``query.workers`` sharing the port (``minicdn.runner`` starts them). Each holds
its own memory for lookups (node registry, keys, apps, locations) and keeps it current from NATS and the
reconcile; the primary (worker 0) also runs the background singletons: the capacity monitor, the lifecycle sweep
and the callback outbox's sweep (the others deliver only the callbacks they record themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from common import hardening
from common.bus import open_bus
from common.callback_outbox import CallbackOutbox
from common.clientaddr import TrustedProxies
from common.config import Settings, require_query
from common.db.pool import open_pool
from common.fastlane import FastLaneSite
from common.geo import GeoLocator, Point
from common.hardening import handler_args, make_header_limit_middleware
from common.httpkit import make_error_middleware
from common.loops import cancel_all
from common.metrics import ClusterCollector, NodeView, QueryMetrics
from common.reqlog import request_id_middleware
from common.startup import set_up
from query_service import keys
from query_service.auth import ApiKeyAuth
from query_service.cluster_stats import ClusterStats
from query_service.dashboard import build_dashboard
from query_service.handlers_dashboard import load_assets
from query_service.history import History, sample_every
from query_service.lane import query_lane
from query_service.lifecycle import LifecycleSweeper
from query_service.locations import location_cache
from query_service.monitor import CapacityMonitor, load_report
from query_service.provisioners import make_provisioner
from query_service.ratelimit import RateLimiter
from query_service.registry import NodeRegistry
from query_service.routes import add_routes
from query_service.watch import LookupCollector, Reconciler, subscribe, unsubscribe

SHUTDOWN_TIMEOUT_S = 10.0  # how long the requests in flight may take to finish once the process stops listening


def create_app(settings: Settings, *, worker: int = 0) -> web.Application:
    """The app of one query-service process; ``worker`` 0 is the primary (see the module's docstring)."""
    require_query(settings)
    qmetrics = QueryMetrics()
    metrics = qmetrics.http
    app = web.Application(
        middlewares=[
            request_id_middleware,
            make_error_middleware(metrics),
            make_header_limit_middleware(settings.http),
        ],
        client_max_size=1024**2,
        handler_args=handler_args(settings.http),
    )
    hardening.apply(app)
    app[keys.SETTINGS] = settings
    app[keys.WORKER] = worker
    app[keys.PROXIES] = TrustedProxies.parse(settings.http.trusted_proxies)
    app[keys.METRICS] = metrics
    app[keys.QUERY_METRICS] = qmetrics
    registry = app[keys.REGISTRY] = NodeRegistry(settings.health.heartbeat_timeout_s, settings.health.recover_s)
    stats = app[keys.CLUSTER_STATS] = ClusterStats()
    app[keys.HISTORY] = History(settings.query.history_s, settings.query.history_points)
    app[keys.ASSETS] = load_assets()

    def node_views() -> list[NodeView]:
        return [
            NodeView(n.node_id, n.region, n.set_id, registry.healthy(n), registry.heartbeat_age_s(n))
            for n in list(registry.nodes.values())
        ]

    qmetrics.watch_cluster(ClusterCollector(node_views, stats.as_mapping))
    # Open the GeoIP database now so a bad path fails at start-up, not on the first request.
    app[keys.GEO] = GeoLocator(settings.geoip.db, Point(settings.query.default_lat, settings.query.default_lon))
    metrics.install(app)
    add_routes(app)
    app.cleanup_ctx.append(_resources)
    return app


async def serve(
    settings: Settings,
    *,
    worker: int = 0,
    reuse_port: bool = False,
    on_ready: Callable[[], None] | None = None,
    **server_kwargs: Any,
) -> None:
    """Serve one query-service process until SIGINT or SIGTERM, then stop listening, finish the requests in flight
    and close. ``reuse_port``: bind with SO_REUSEPORT, beside the other workers (the kernel spreads connections
    over them). ``on_ready`` is called once the port is bound (every resource is open by then). ``server_kwargs``
    go to aiohttp's server (the access log)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def make_runner() -> web.AppRunner:
        app = create_app(settings, worker=worker)
        return web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT_S, handler_cancellation=True, **server_kwargs)

    runner = await set_up(make_runner, settings.database.startup_wait_s, stop)
    if runner is None:
        return
    try:
        await query_site(runner, runner.app, settings.query.host, settings.query.port, reuse_port).start()
        if on_ready is not None:
            on_ready()
        await stop.wait()
    finally:
        await runner.cleanup()


def query_site(runner: web.AppRunner, app: web.Application, host: str, port: int, reuse_port: bool) -> web.TCPSite:
    """The listening site (after ``runner.setup()``): with ``query.fast_lane``, URL lookups known in memory are
    answered before aiohttp (``query_service.lane``)."""
    if app[keys.SETTINGS].query.fast_lane:
        return FastLaneSite(runner, host, port, query_lane(app), reuse_port=reuse_port)
    return web.TCPSite(runner, host, port, reuse_port=reuse_port)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(app[keys.GEO].close)
        pool = app[keys.POOL] = await stack.enter_async_context(open_pool(settings.database))
        bus = app[keys.BUS] = await stack.enter_async_context(open_bus(settings.nats, "query-service"))
        primary = app[keys.WORKER] == 0
        limits, query = settings.ratelimit, settings.query
        auth = app[keys.AUTH] = ApiKeyAuth(
            pool,
            RateLimiter(limits.requests_per_s, limits.burst),
            max_entries=query.key_cache_size,
            absent_ttl_s=query.reconcile_s,
        )
        callbacks = app[keys.CALLBACKS] = CallbackOutbox(settings, pool)
        stack.push_async_callback(callbacks.close)
        callbacks.start(sweep=primary)
        locations = app[keys.LOCATIONS] = location_cache(pool, query.location_cache_size, query.reconcile_s)
        # Subscribed before anything is read or served: no event is missed after start-up.
        stack.push_async_callback(unsubscribe, await subscribe(bus, locations, auth))
        reconciler = Reconciler(locations, auth, query.reconcile_s)
        app[keys.QUERY_METRICS].http.registry.register(LookupCollector([auth.keys, auth.apps, locations], reconciler))
        reconcile = asyncio.create_task(reconciler.run(), name="lookup-reconcile")
        stack.push_async_callback(cancel_all, [reconcile])
        registry = app[keys.REGISTRY]
        await registry.reload(pool)
        task = asyncio.create_task(registry.run(pool, bus, query.node_refresh_s), name="node-registry")
        stack.push_async_callback(cancel_all, [task])
        sweeper = app[keys.LIFECYCLE] = LifecycleSweeper(settings.lifecycle, pool, callbacks)
        if primary:
            lifecycle = asyncio.create_task(sweeper.run(), name="lifecycle-sweep")
            stack.push_async_callback(cancel_all, [lifecycle])
        monitor = app[keys.MONITOR] = CapacityMonitor(settings, pool, make_provisioner(settings), registry)
        if settings.capacity.enabled and primary:
            watcher = asyncio.create_task(monitor.run(), name="capacity-monitor")
            stack.push_async_callback(cancel_all, [watcher])

        async def capacity_report() -> dict[str, Any]:
            return (await load_report(pool, settings, registry)).to_json()

        stats = asyncio.create_task(
            app[keys.CLUSTER_STATS].run(pool, bus, settings.query.stats_interval_s, capacity_report),
            name="cluster-stats",
        )
        stack.push_async_callback(cancel_all, [stats])

        def summary() -> dict[str, Any] | None:
            figures = app[keys.CLUSTER_STATS]
            if figures.backlog.read_at == float("-inf") or not registry.nodes:
                return None  # nothing read yet: charting zeros would draw a false drop at every start
            doc = build_dashboard(registry.nodes.values(), registry.healthy, registry.heartbeat_age_s, figures)
            return dict(doc["summary"])

        charts = asyncio.create_task(
            sample_every(app[keys.HISTORY], summary, settings.query.stats_interval_s), name="dashboard-history"
        )
        stack.push_async_callback(cancel_all, [charts])
        yield
