"""Requests in flight on a node: counted (the heartbeat reports the figure, and a stopping node waits for them
to end), and, once the node is stopping, answered with ``Connection: close`` so that clients stop reusing their
connections to it (their next request goes to a node still in the URL answers)."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from common.reqlog import Handler
from storage_node import keys
from storage_node.heartbeat import NodeStatus


@web.middleware
async def count_in_flight(request: web.Request, handler: Handler) -> web.StreamResponse:
    status = request.app[keys.STATUS]
    status.in_flight += 1
    try:
        response = await handler(request)
    finally:
        status.in_flight -= 1
    if status.stopping:
        response.force_close()
    return response


async def wait_idle(status: NodeStatus, timeout_s: float, poll_s: float = 0.05) -> bool:
    """Until no handler runs (an upload whose body is still arriving included), or ``timeout_s``; True when idle.
    Called once the node stopped listening: aiohttp's own shutdown stops reading request bodies, so an upload
    still arriving then would be cut off, not finished."""
    deadline = time.monotonic() + timeout_s
    while status.in_flight > 0:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll_s)
    return True
