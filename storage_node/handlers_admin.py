"""/healthz and /stats of a storage node (/metrics comes from common.httpkit). /healthz names the process that
answered (``worker``: 0 is the primary, ``node.workers``); /stats is the node's usage from any of them."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from aiohttp import web

from common.db import nodes as db_nodes
from common.errors import Unavailable
from storage_node import keys


async def healthz(request: web.Request) -> web.Response:
    return web.json_response(request.app[keys.HEALTH])


async def stats(request: web.Request) -> web.Response:
    app = request.app
    node = app[keys.SETTINGS].node
    if not app[keys.ROLE].primary:
        return web.json_response(await _primarys_figures(request))
    usage = await asyncio.to_thread(app[keys.STORE].usage)
    return web.json_response(
        {
            "node_id": node.node_id,
            "region": node.region,
            "set_id": node.set_id,
            "capacity_bytes": usage.capacity_bytes,
            "used_bytes": usage.used_bytes,
            "free_bytes": usage.free_bytes,
            "objects": usage.objects,
            "tiers": {name: dataclasses.asdict(t) for name, t in usage.tiers.items()},
            "variant_bytes": usage.variant_bytes,
            "state": app[keys.STATUS].state,
        }
    )


async def _primarys_figures(request: web.Request) -> dict[str, Any]:
    """In a node's non-primary process, which counts only what it changed itself: the node's figures as its primary
    last recorded them (its heartbeat, ``node.heartbeat_interval_s`` old at most)."""
    app = request.app
    node = app[keys.SETTINGS].node
    row = next((r for r in await db_nodes.list_nodes(app[keys.POOL]) if r["node_id"] == node.node_id), None)
    if row is None:
        raise Unavailable("the node has not registered yet", headers={"Retry-After": "1"})
    return {
        "node_id": node.node_id,
        "region": node.region,
        "set_id": node.set_id,
        "capacity_bytes": row["capacity_bytes"],
        "used_bytes": row["used_bytes"],
        "free_bytes": row["free_bytes"],
        "objects": row["objects"],
        "tiers": row["tiers"],
        "variant_bytes": row["variant_bytes"],
        "state": row["state"],
    }
