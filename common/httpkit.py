"""Shared aiohttp parts: the one error middleware that renders API.md error bodies, JSON helpers, /metrics."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from common.errors import MinicdnError, error_body

logger = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")  # RFC 3339
    return str(value)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers,
                             dumps=lambda d: json.dumps(d, default=_json_default))


class HttpMetrics:
    """Per-app registry (several apps may share a process in tests) with the request metrics every app has."""

    def __init__(self, component: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("minicdn_http_requests_total", "HTTP requests by route and status",
                                ["component", "route", "method", "status"], registry=self.registry)
        self.duration = Histogram("minicdn_http_request_duration_seconds", "HTTP request duration by route",
                                  ["component", "route"], registry=self.registry,
                                  buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
        self.component = component

    async def handler(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_error_middleware(metrics: HttpMetrics) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except MinicdnError as exc:
            status = exc.status
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
            metrics.requests.labels(metrics.component, route, request.method, str(status)).inc()
            metrics.duration.labels(metrics.component, route).observe(time.perf_counter() - started)

    return errors
