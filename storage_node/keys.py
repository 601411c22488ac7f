"""Typed aiohttp AppKeys of the storage node."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from common.bus import Bus
from common.callback_outbox import CallbackOutbox
from common.config import Settings
from common.db.rows import Pool
from common.metrics import NodeMetrics
from storage_node.commits import UploadCommits
from storage_node.gate import ServeGate
from storage_node.heartbeat import Heartbeats, NodeStatus
from storage_node.hotlink import HotlinkGuard
from storage_node.integrity import Integrity
from storage_node.objects.store import Store
from storage_node.process import Processor
from storage_node.publisher import Publisher
from storage_node.render import Renderer
from storage_node.siblings import Siblings
from storage_node.tiers import TierManager
from storage_node.worker_reports import Role

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
HEARTBEATS = web.AppKey("heartbeats", Heartbeats)
PUBLISHER = web.AppKey("publisher", Publisher)
COMMITS = web.AppKey("commits", UploadCommits)
HOTLINK = web.AppKey("hotlink", HotlinkGuard)
TIERS = web.AppKey("tiers", TierManager)
INTEGRITY = web.AppKey("integrity", Integrity)
ROLE = web.AppKey("role", Role)  # which of the node's processes (``node.workers``) this is
SIBLINGS = web.AppKey("siblings", Siblings)
# Copies an image here in the background (image_id, sha256, bytes, content_type); set by the process's
# composition root when a replicator runs in-process, absent otherwise.
ReadRepair = Callable[[str, str, int, str], Awaitable[None]]
READ_REPAIR: web.AppKey[ReadRepair] = web.AppKey("read_repair")
HEALTH = web.AppKey("health", dict)  # the /healthz body: fixed for the life of the process
