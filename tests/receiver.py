"""A callback receiver for tests: a real aiohttp server on loopback that records every POST it gets and
answers with scripted statuses."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from common import callbacks
from common.procs import free_port


@dataclass
class Hit:
    body: dict[str, Any]
    delivery_id: str
    signed: bool
    status: int


@dataclass
class CallbackReceiver:
    """``answers`` are the statuses of the first POSTs (then 204); ``delay_s`` holds each answer back."""

    signing_keys: dict[str, bytes] = field(default_factory=dict)
    answers: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    port: int = field(default_factory=free_port)
    hits: list[Hit] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def delivered(self) -> list[Hit]:
        return [h for h in self.hits if 200 <= h.status < 300]

    async def _hook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        status = self.answers.pop(0) if self.answers else 204
        self.hits.append(
            Hit(
                json.loads(raw),
                request.headers.get(callbacks.DELIVERY_HEADER, ""),
                callbacks.verify(request.headers.get(callbacks.SIGNATURE_HEADER, ""), raw, self.signing_keys),
                status,
            )
        )
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return web.Response(status=status)

    async def start(self) -> CallbackReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
