"""Typed aiohttp AppKeys of the storage node."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import Counter, Gauge
from psycopg_pool import AsyncConnectionPool

from common.bus import Bus
from common.config import Settings
from common.httpkit import HttpMetrics
from storage_node.render import Renderer
from storage_node.store import Store


@dataclass
class NodeMetrics:
    http: HttpMetrics
    uploads: Counter = field(init=False)
    variant_builds: Counter = field(init=False)
    usage: Gauge = field(init=False)
    scrub_corrupt: Counter = field(init=False)
    scrub_bytes: Counter = field(init=False)

    def __post_init__(self) -> None:
        reg = self.http.registry
        self.uploads = Counter("minicdn_uploads_total", "Uploads by outcome", ["outcome"], registry=reg)
        self.variant_builds = Counter("minicdn_variant_builds_total", "Variants built", ["fmt"], registry=reg)
        self.usage = Gauge("minicdn_node_bytes", "Node capacity/used/free bytes", ["kind"], registry=reg)
        self.scrub_corrupt = Counter("minicdn_scrub_corrupt_total", "Corrupt originals found by the scrubber",
                                     registry=reg)
        self.scrub_bytes = Counter("minicdn_scrub_bytes_total", "Bytes re-hashed by the scrubber", registry=reg)


@dataclass
class NodeStatus:
    """What the last heartbeat learned (state is operator-set in Postgres)."""

    state: str = "active"
    in_flight: int = 0


SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", AsyncConnectionPool)
BUS = web.AppKey("bus", Bus)
STORE = web.AppKey("store", Store)
RENDERER = web.AppKey("renderer", Renderer)
METRICS = web.AppKey("metrics", NodeMetrics)
STATUS = web.AppKey("status", NodeStatus)
