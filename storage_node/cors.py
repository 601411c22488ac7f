"""CORS for browser uploads: `PUT /upload/...` and its preflight, for the configured origins only.

Only the upload path speaks CORS; a browser on another origin gets no `Access-Control-Allow-Origin`,
and a PUT that carries a disallowed `Origin` is refused before anything is read or written.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from common.errors import Forbidden

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
UPLOAD_PREFIX = "/upload/"
ALLOWED_HEADERS = ("content-type",)
PREFLIGHT_MAX_AGE_S = 600


def origin_allowed(origins: Sequence[str], origin: str) -> bool:
    return "*" in origins or origin in origins


def _cors_headers(origins: Sequence[str], origin: str) -> dict[str, str]:
    return {"Access-Control-Allow-Origin": "*" if "*" in origins else origin, "Vary": "Origin"}


def make_cors_middleware(origins: Sequence[str]) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    allowed = tuple(origins)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None or not request.path.startswith(UPLOAD_PREFIX):
            return await handler(request)
        ok = origin_allowed(allowed, origin)
        if request.method == "OPTIONS":
            return _preflight(request, allowed, origin, ok)
        if not ok:
            error = Forbidden("uploads from this origin are not allowed", code="cors_forbidden")
            return web.json_response(error.body(), status=error.status, headers={"Vary": "Origin"})
        response = await handler(request)
        response.headers.update(_cors_headers(allowed, origin))
        return response

    return cors


def _preflight(request: web.Request, allowed: Sequence[str], origin: str, ok: bool) -> web.Response:
    method = request.headers.get("Access-Control-Request-Method", "")
    asked = [h.strip().lower() for h in request.headers.get("Access-Control-Request-Headers", "").split(",")
             if h.strip()]
    if not ok or method != "PUT" or any(h not in ALLOWED_HEADERS for h in asked):
        error = Forbidden("this cross-origin upload is not allowed", code="cors_forbidden")
        return web.json_response(error.body(), status=error.status, headers={"Vary": "Origin"})
    return web.Response(status=204, headers={
        **_cors_headers(allowed, origin),
        "Access-Control-Allow-Methods": "PUT",
        "Access-Control-Allow-Headers": ", ".join(ALLOWED_HEADERS),
        "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
    })
