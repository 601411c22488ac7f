"""A scripted stand-in for a query service and a storage node, on a real aiohttp server on loopback: it
answers each route from a queue of canned responses (then a default), and records what it received.
Used to drive the SDK into the situations a healthy test cluster never produces (503, 429, resets).
`TrackingFile` records how an upload source is read."""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from common.procs import free_port

IMAGE_ID = "abcdefghijklmnopqrstuv"


def image_json(status: str = "ready", image_id: str = IMAGE_ID, **extra: Any) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "status": status,
        "reason": None,
        "visibility": "public",
        "format": "jpeg",
        "width": 640,
        "height": 480,
        "bytes": 1234,
        "created_at": "2026-01-31T12:00:00Z",
        "tags": [],
        "metadata": {},
        "replicas": [{"node_id": "n1", "region": "us-east", "state": "ok", "verified_at": None}],
        **extra,
    }


@dataclass
class Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    abort: bool = False  # drop the connection instead of answering


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    at: float
    authorization: str | None
    body_bytes: int = 0
    body_sha256: str = ""
    body_chunks: int = 0


class FakePeer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.scripts: dict[str, list[Answer]] = {}
        self.defaults: dict[str, Answer] = {
            "POST /v1/uploads": Answer(201, {"image_id": IMAGE_ID, "upload_url": f"{self.url}/upload/{IMAGE_ID}"}),
            f"PUT /upload/{IMAGE_ID}": Answer(201, {"image_id": IMAGE_ID, "status": "uploaded"}),
            f"GET /v1/images/{IMAGE_ID}": Answer(200, image_json()),
            f"DELETE /v1/images/{IMAGE_ID}": Answer(202, {"image_id": IMAGE_ID, "status": "deleted"}),
        }
        self.seen: list[Seen] = []
        self._runner: web.AppRunner | None = None

    def script(self, route: str, *answers: Answer) -> None:
        self.scripts.setdefault(route, []).extend(answers)

    def requests(self, route: str) -> list[Seen]:
        return [s for s in self.seen if f"{s.method} {s.path}" == route]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(
            request.method,
            request.path,
            dict(request.query),
            time.monotonic(),
            request.headers.get("Authorization"),
        )
        self.seen.append(seen)
        digest = hashlib.sha256()
        async for chunk in request.content.iter_any():  # read as it arrives, like a node does
            digest.update(chunk)
            seen.body_bytes += len(chunk)
            seen.body_chunks += 1
        seen.body_sha256 = digest.hexdigest()
        route = f"{request.method} {request.path}"
        queue = self.scripts.get(route)
        answer = queue.pop(0) if queue else self.defaults.get(route, Answer(404, {"error": {"code": "not_found"}}))
        if answer.abort:
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        if answer.body is None:
            return web.Response(status=answer.status, headers=answer.headers)
        return web.json_response(answer.body, status=answer.status, headers=answer.headers)

    async def start(self) -> FakePeer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def error(status: int, code: str, **headers: str) -> Answer:
    return Answer(status, {"error": {"code": code, "message": f"scripted {code}"}}, dict(headers))


class TrackingFile(io.BytesIO):
    """A binary file that records every read size: proof the SDK streams it rather than reading it whole."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int] = []

    def read(self, size: int | None = -1, /) -> bytes:
        self.reads.append(-1 if size is None else size)
        return super().read(size)
