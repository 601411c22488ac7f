"""Operator endpoints of the query service: /healthz (the control-plane views are in handlers_control)."""

from __future__ import annotations

from aiohttp import web

from common import __version__
from common.httpkit import json_response
from query_service import keys


async def healthz(request: web.Request) -> web.Response:
    registry = request.app[keys.REGISTRY]
    healthy = sum(registry.healthy(n) for n in registry.nodes.values())
    return json_response(
        {
            "status": "ok",
            "component": "query-service",
            "version": __version__,
            "nodes": len(registry.nodes),
            "healthy_nodes": healthy,
            "worker": request.app[keys.WORKER],  # which of the processes sharing the port answered (0: primary)
        }
    )
