"""/healthz and /stats of a storage node (/metrics comes from common.httpkit)."""

from __future__ import annotations

import asyncio
import dataclasses

from aiohttp import web

from storage_node import keys


async def healthz(request: web.Request) -> web.Response:
    return web.json_response(request.app[keys.HEALTH])


async def stats(request: web.Request) -> web.Response:
    app = request.app
    node = app[keys.SETTINGS].node
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
