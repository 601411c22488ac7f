"""Request hardening shared by every process: header-size limits, slow-client timeouts, body-stream
timeouts, and the security headers every response carries.

aiohttp's own limits (line/field sizes) are set above ours, so that an oversized header normally meets
our limit first and gets the docs/api.md JSON error (431) instead of the parser's plain-text 400. A client
that never finishes its headers is closed by aiohttp's keep-alive timer, which also runs before the
first request of a connection: ``header_timeout_s`` sets it, so a slowloris gets cut off.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

from common.config import HttpSettings
from common.errors import HeadersTooLarge, InvalidRequest, RequestTimeout

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BODY_CHUNK_BYTES = 256 * 1024
# Image responses: nothing in them may run or load anything, even if a browser is talked into
# rendering one as a document.
IMAGE_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"


def handler_args(cfg: HttpSettings) -> dict[str, Any]:
    """aiohttp server limits: idle/header timeout and per-line limits (above ``max_header_bytes``)."""
    parser_limit = max(2 * cfg.max_header_bytes, 8190)
    return {
        "keepalive_timeout": cfg.header_timeout_s,
        "max_line_size": parser_limit,
        "max_field_size": parser_limit,
        "max_headers": 128,
    }


def make_header_limit_middleware(cfg: HttpSettings) -> Middleware:
    @web.middleware
    async def header_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        size = len(request.raw_path) + sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
        if size > cfg.max_header_bytes:
            raise HeadersTooLarge(f"request line and headers are over {cfg.max_header_bytes} bytes")
        return await handler(request)

    return header_limit


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, errors included, is never MIME-sniffed."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


async def timed_chunks(
    stream: StreamReader, timeout_s: float, chunk_bytes: int = BODY_CHUNK_BYTES
) -> AsyncIterator[bytes]:
    """The body in chunks; 408 when nothing arrives for ``timeout_s``, 400 when the client hangs up
    before the body its Content-Length promised (or sends broken chunked framing)."""
    while True:
        try:
            async with asyncio.timeout(timeout_s):
                chunk = await stream.read(chunk_bytes)
        except TimeoutError:
            raise RequestTimeout(f"no body bytes for {timeout_s:g} s") from None
        except (HttpProcessingError, ConnectionResetError, asyncio.IncompleteReadError) as exc:
            raise InvalidRequest(f"incomplete request body ({type(exc).__name__})") from None
        if not chunk:
            return
        yield chunk


def apply(app: web.Application) -> None:
    app.on_response_prepare.append(security_headers)


async def read_small_body(request: web.Request, max_bytes: int, timeout_s: float) -> bytes | None:
    """The whole body of a small request (JSON), or None when it is longer than ``max_bytes``.

    Reads until the end (a single ``read(n)`` may return only the first segment), with the same stall
    timeout and hang-up handling as uploads.
    """
    parts: list[bytes] = []
    size = 0
    async for chunk in timed_chunks(request.content, timeout_s, chunk_bytes=max_bytes + 1):
        size += len(chunk)
        if size > max_bytes:
            return None
        parts.append(chunk)
    return b"".join(parts)
