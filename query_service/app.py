"""Composition root of the query service: AppKeys, routes, middleware, resources opened in cleanup_ctx."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from common import hardening
from common.bus import open_bus
from common.callback_outbox import CallbackOutbox
from common.clientaddr import TrustedProxies
from common.config import Settings, require_query
from common.db.pool import open_pool
from common.geo import GeoLocator, Point
from common.hardening import handler_args, make_header_limit_middleware
from common.httpkit import make_error_middleware
from common.loops import cancel_all
from common.metrics import ClusterCollector, NodeView, QueryMetrics
from common.reqlog import request_id_middleware
from query_service import keys
from query_service.auth import ApiKeyAuth
from query_service.cluster_stats import ClusterStats
from query_service.dashboard import build_dashboard
from query_service.handlers_dashboard import load_assets
from query_service.handlers_deletes import watch_deletes
from query_service.history import History, sample_every
from query_service.lifecycle import LifecycleSweeper
from query_service.locations import LocationCache
from query_service.monitor import CapacityMonitor, load_report
from query_service.provisioners import make_provisioner
from query_service.ratelimit import RateLimiter
from query_service.registry import NodeRegistry
from query_service.routes import add_routes


def create_app(settings: Settings) -> web.Application:
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


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(app[keys.GEO].close)
        pool = app[keys.POOL] = await stack.enter_async_context(open_pool(settings.database))
        bus = app[keys.BUS] = await stack.enter_async_context(open_bus(settings.nats, "query-service"))
        limits = settings.ratelimit
        app[keys.AUTH] = ApiKeyAuth(pool, RateLimiter(limits.requests_per_s, limits.burst))
        callbacks = app[keys.CALLBACKS] = CallbackOutbox(settings, pool)
        stack.push_async_callback(callbacks.close)
        callbacks.start()
        app[keys.LOCATIONS] = LocationCache(pool, settings.query.location_cache_size)
        registry = app[keys.REGISTRY]
        await registry.reload(pool)
        task = asyncio.create_task(registry.run(pool, bus, settings.query.node_refresh_s), name="node-registry")
        stack.push_async_callback(cancel_all, [task])
        deletes = asyncio.create_task(watch_deletes(bus, app[keys.LOCATIONS]), name="delete-watch")
        stack.push_async_callback(cancel_all, [deletes])
        sweeper = app[keys.LIFECYCLE] = LifecycleSweeper(settings.lifecycle, pool, callbacks)
        lifecycle = asyncio.create_task(sweeper.run(), name="lifecycle-sweep")
        stack.push_async_callback(cancel_all, [lifecycle])
        monitor = app[keys.MONITOR] = CapacityMonitor(settings, pool, make_provisioner(settings), registry)
        if settings.capacity.enabled:
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
