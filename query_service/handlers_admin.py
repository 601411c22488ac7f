"""Operator endpoints of the query service: /healthz and /v1/nodes."""

from __future__ import annotations

from aiohttp import web

from common import __version__
from common.httpkit import json_response
from query_service import keys


async def healthz(request: web.Request) -> web.Response:
    registry = request.app[keys.REGISTRY]
    healthy = sum(registry.healthy(n) for n in registry.nodes.values())
    return json_response({"status": "ok", "component": "query-service", "version": __version__,
                          "nodes": len(registry.nodes), "healthy_nodes": healthy})


async def list_nodes(request: web.Request) -> web.Response:
    await request.app[keys.AUTH].required(request, scope="admin")
    registry = request.app[keys.REGISTRY]
    return json_response({"nodes": [
        {"node_id": n.node_id, "region": n.region, "set_id": n.set_id, "base_url": n.base_url, "state": n.state,
         "set_state": n.set_state, "healthy": registry.healthy(n), "capacity_bytes": n.capacity_bytes,
         "used_bytes": n.used_bytes, "free_bytes": n.free_bytes, "objects": n.objects,
         "heartbeat_age_s": registry.heartbeat_age_s(n)}
        for n in sorted(registry.nodes.values(), key=lambda n: (n.set_id, n.region))
    ]})
