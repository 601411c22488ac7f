"""Shared aiohttp parts: the one error middleware that renders docs/api.md error bodies (and counts requests), JSON
helpers. The metric objects live in common.metrics.

The middleware is also the one place where a database failure meets HTTP: psycopg's ``OperationalError`` (the
server gone, a connection lost, or the pool's ``PoolTimeout`` when none came free within
``database.acquire_timeout_s``) is answered `503 database_unavailable` with ``Retry-After``, in every handler
of every service, instead of a 500."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
from aiohttp import web
from aiohttp.typedefs import Middleware

from common.errors import DatabaseUnavailable, MinicdnError, error_body
from common.metrics import HttpMetrics, route_of

logger = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")  # RFC 3339
    return str(value)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=lambda d: json.dumps(d, default=_json_default))


def make_error_middleware(metrics: HttpMetrics) -> Middleware:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        route = route_of(request)
        status = 500
        code = ""
        try:
            try:
                response = await handler(request)
            except psycopg.OperationalError as db_exc:  # logged below, once; psycopg_pool logs the cause
                raise DatabaseUnavailable() from db_exc
            status = response.status
            return response
        except MinicdnError as exc:
            status, code = exc.status, exc.code
            if exc.status >= 500:
                logger.warning("%s %s: %s", request.method, request.path, exc.message)
            return web.json_response(exc.body(), status=exc.status, headers=exc.headers)
        except web.HTTPException as exc:
            status = exc.status
            if exc.status < 400:
                raise
            code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "http_error")
            return web.json_response(error_body(code, exc.reason), status=exc.status)
        except Exception:
            logger.exception("%s %s failed", request.method, request.path)
            return web.json_response(error_body("internal_error", "internal error"), status=500)
        finally:
            metrics.count_request(route, request.method, status, time.perf_counter() - started)
            if 400 <= status < 500 and code:
                metrics.rejections.labels(metrics.component, code).inc()

    return errors
