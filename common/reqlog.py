"""Request ids and the one-line-per-request access log.

Every request gets an id: the caller's `X-Request-Id` when it is well formed, else the `rid` query
parameter (the query service puts its own id into the upload URLs it signs, so the node's PUT line
carries the id of the `POST /v1/uploads` that asked for it), else a new one. The id is held in a
context variable, so every log line written while handling the request carries it; it is sent back
in the response header, passed to peers (`X-Request-Id` on node-to-node fetches) and on the JetStream
upload event, so a replicator's lines for an image carry the id of the upload that caused them.

The access line is written by an aiohttp access logger, after the body has been sent, with the
route template, status, bytes and duration; never the query string (signed URLs carry signatures).
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from multidict import CIMultiDictProxy

HEADER = "X-Request-Id"
QUERY_PARAM = "rid"
REQUEST_ID: ContextVar[str | None] = ContextVar("minicdn_request_id", default=None)
_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
access_logger = logging.getLogger("minicdn.access")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_ID_PREFIX = secrets.token_hex(4)  # this process's: ids stay unique across processes without a syscall each
_id_counter = itertools.count(1)


def new_request_id() -> str:
    """16 hex digits: the process's random prefix, then a counter."""
    return f"{_ID_PREFIX}{next(_id_counter) & 0xFFFFFFFF:08x}"


def clean_request_id(value: str | None) -> str | None:
    """A caller-supplied id, if it is safe to log and to pass on (bounded, no spaces or quotes)."""
    return value if value is not None and _VALID.match(value) else None


def current() -> str | None:
    return REQUEST_ID.get()


def outgoing_headers() -> dict[str, str]:
    """Headers that carry the current request id to another minicdn process."""
    rid = REQUEST_ID.get()
    return {HEADER: rid} if rid else {}


def adopt(headers: Mapping[str, str] | CIMultiDictProxy[str] | None) -> str:
    """Take the request id from a message's headers (or make one) and make it current: for jobs that
    do not run inside an HTTP request (a JetStream message, a sweep)."""
    rid = clean_request_id((headers or {}).get(HEADER)) or new_request_id()
    REQUEST_ID.set(rid)
    return rid


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = (
        clean_request_id(request.headers.get(HEADER))
        or clean_request_id(request.query.get(QUERY_PARAM))
        or new_request_id()
    )
    token = REQUEST_ID.set(rid)
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # redirects raised by handlers
            exc.headers[HEADER] = rid
            raise
        if not response.prepared:  # the access logger reads the id back from here
            response.headers[HEADER] = rid
        return response
    finally:
        REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    """Puts the current request id (or '-') on every record, for both text and JSON output."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get() or "-"
        return True


class AccessLogger(AbstractAccessLogger):
    """One line per request, written after the response is sent (so bytes and duration are final)."""

    component = "minicdn"

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = "unmatched"
        if isinstance(request, web.Request) and request.match_info.route.resource is not None:
            route = request.match_info.route.resource.canonical
        rid = response.headers.get(HEADER, "-")  # set by request_id_middleware
        size = _body_bytes(request, response)
        access_line(
            self.logger, self.component, request.method, request.path, route, response.status, size, time, rid,
            request.remote or "",
        )  # fmt: skip

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def access_line(
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    component: str,
    method: str,
    path: str,
    route: str,
    status: int,
    size: int,
    seconds: float,
    rid: str,
    remote: str,
) -> None:
    """The one access line of a request (aiohttp's path and the fast lane, ``common.fastlane``, alike)."""
    duration_ms = round(seconds * 1000, 2)
    logger.info(
        "%s %s %d %dB %.1fms",
        method,
        path,
        status,
        size,
        duration_ms,
        extra={
            "request_id": rid,
            "component": component,
            "method": method,
            "path": path,
            "route": route,
            "status": status,
            "bytes": size,
            "duration_ms": duration_ms,
            "remote": remote,
        },
    )


def _body_bytes(request: web.BaseRequest, response: web.StreamResponse) -> int:
    """Body bytes sent: Content-Length when set (files go out by sendfile, which body_length misses)."""
    if request.method == "HEAD" or response.status in (204, 304):
        return 0
    length = response.content_length
    return length if length is not None else response.body_length


def access_logger_for(component: str) -> type[AccessLogger]:
    return type(f"AccessLogger_{component.replace('-', '_')}", (AccessLogger,), {"component": component})
