"""/healthz and /stats of a storage node (/metrics comes from common.httpkit)."""

from __future__ import annotations

import asyncio

import pyvips
from aiohttp import web

from common import __version__
from storage_node import keys
from storage_node.codecs import codec_versions


async def healthz(request: web.Request) -> web.Response:
    node = request.app[keys.SETTINGS].node
    return web.json_response({
        "status": "ok", "component": "storage-node", "node_id": node.node_id, "region": node.region,
        "version": __version__, "libvips": ".".join(str(pyvips.version(i)) for i in range(3)),
        "codecs": await asyncio.to_thread(codec_versions),
    })


async def stats(request: web.Request) -> web.Response:
    app = request.app
    node = app[keys.SETTINGS].node
    usage = await asyncio.to_thread(app[keys.STORE].usage)
    return web.json_response({
        "node_id": node.node_id, "region": node.region, "set_id": node.set_id,
        "capacity_bytes": usage.capacity_bytes, "used_bytes": usage.used_bytes, "free_bytes": usage.free_bytes,
        "objects": usage.objects, "state": app[keys.STATUS].state,
    })
