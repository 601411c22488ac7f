"""Typed aiohttp AppKeys of the storage node."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from common.bus import Bus
from common.callback_outbox import CallbackOutbox
from common.config import Settings
from common.metrics import NodeMetrics
from storage_node.gate import ServeGate
from storage_node.hotlink import HotlinkGuard
from storage_node.process import Processor
from storage_node.render import Renderer
from storage_node.store import Store


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
PROCESSOR = web.AppKey("processor", Processor)
GATE = web.AppKey("gate", ServeGate)
CALLBACKS = web.AppKey("callbacks", CallbackOutbox)
METRICS = web.AppKey("metrics", NodeMetrics)
STATUS = web.AppKey("status", NodeStatus)
HOTLINK = web.AppKey("hotlink", HotlinkGuard)
HEALTH = web.AppKey("health", dict)  # the /healthz body: fixed for the life of the process
