"""Typed aiohttp AppKeys of the query service."""

from __future__ import annotations

from aiohttp import web

from common.bus import Bus
from common.callback_outbox import CallbackOutbox
from common.clientaddr import TrustedProxies
from common.config import Settings
from common.db.rows import Pool
from common.geo import GeoLocator
from common.metrics import HttpMetrics, QueryMetrics
from query_service.auth import ApiKeyAuth
from query_service.cluster_stats import ClusterStats
from query_service.history import History
from query_service.lifecycle import LifecycleSweeper
from query_service.locations import LocationCache
from query_service.monitor import CapacityMonitor
from query_service.registry import NodeRegistry

SETTINGS = web.AppKey("settings", Settings)
POOL: web.AppKey[Pool] = web.AppKey("pool")
BUS = web.AppKey("bus", Bus)
GEO = web.AppKey("geo", GeoLocator)
REGISTRY = web.AppKey("registry", NodeRegistry)
LOCATIONS: web.AppKey[LocationCache] = web.AppKey("locations")
WORKER = web.AppKey("worker", int)  # this process's index among query.workers; 0 is the primary
AUTH = web.AppKey("auth", ApiKeyAuth)
METRICS = web.AppKey("metrics", HttpMetrics)
MONITOR = web.AppKey("monitor", CapacityMonitor)
PROXIES = web.AppKey("proxies", TrustedProxies)
QUERY_METRICS = web.AppKey("query_metrics", QueryMetrics)
CLUSTER_STATS = web.AppKey("cluster_stats", ClusterStats)
HISTORY = web.AppKey("history", History)
ASSETS = web.AppKey("assets", dict)
CALLBACKS = web.AppKey("callbacks", CallbackOutbox)
LIFECYCLE = web.AppKey("lifecycle", LifecycleSweeper)
