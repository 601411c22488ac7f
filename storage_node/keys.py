"""Typed aiohttp AppKeys of the storage node."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from common.bus import Bus
from common.callback_outbox import CallbackOutbox
from common.config import Settings
from common.db.rows import Pool
from common.metrics import NodeMetrics
from storage_node.gate import ServeGate
from storage_node.hotlink import HotlinkGuard
from storage_node.objects.store import Store
from storage_node.process import Processor
from storage_node.render import Renderer
from storage_node.tiers import TierManager


@dataclass
class NodeStatus:
    """What the last heartbeat learned (state is operator-set in Postgres)."""

    state: str = "active"
    in_flight: int = 0


SETTINGS = web.AppKey("settings", Settings)
POOL: web.AppKey[Pool] = web.AppKey("pool")
BUS = web.AppKey("bus", Bus)
STORE = web.AppKey("store", Store)
RENDERER = web.AppKey("renderer", Renderer)
PROCESSOR = web.AppKey("processor", Processor)
GATE = web.AppKey("gate", ServeGate)
CALLBACKS = web.AppKey("callbacks", CallbackOutbox)
METRICS = web.AppKey("metrics", NodeMetrics)
STATUS = web.AppKey("status", NodeStatus)
HOTLINK = web.AppKey("hotlink", HotlinkGuard)
TIERS = web.AppKey("tiers", TierManager)
# Copies an image here in the background (image_id, sha256, bytes, content_type); set by the process's
# composition root when a replicator runs in-process, absent otherwise.
ReadRepair = Callable[[str, str, int, str], Awaitable[None]]
READ_REPAIR: web.AppKey[ReadRepair] = web.AppKey("read_repair")
HEALTH = web.AppKey("health", dict)  # the /healthz body: fixed for the life of the process
