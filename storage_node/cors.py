"""CORS for signed uploads: browsers PUT straight to a node from the app's page (another origin).

The signed URL is the only credential (no cookies), so by default any origin may use it;
`node.cors_origin` narrows this to a comma-separated list of origins, or disables CORS when empty.
Only the upload path speaks CORS: images are shown with <img>, which needs none, and peer endpoints
are not for browsers. A preflight or a PUT from an origin that is not allowed is refused (403
`cors_forbidden`) before anything is read or written.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from common.errors import Forbidden
from common.reqlog import HEADER
from storage_node import keys

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
UPLOAD_PREFIX = "/upload/"
ALLOWED_HEADERS = ("content-type", HEADER.lower())
PREFLIGHT_MAX_AGE_S = 600


def allowed_origins(setting: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in setting.split(",") if part.strip())


def allow_origin_value(setting: str, origin: str | None) -> str | None:
    """The Access-Control-Allow-Origin to send for ``origin`` (None: not allowed)."""
    origins = allowed_origins(setting)
    if "*" in origins:
        return "*"
    return origin if origin is not None and origin in origins else None


def _refuse(message: str) -> web.Response:
    error = Forbidden(message, code="cors_forbidden")
    return web.json_response(error.body(), status=error.status, headers={"Vary": "Origin"})


async def preflight(request: web.Request) -> web.Response:
    setting = request.app[keys.SETTINGS].node.cors_origin
    value = allow_origin_value(setting, request.headers.get("Origin"))
    method = request.headers.get("Access-Control-Request-Method", "")
    asked = [
        h.strip().lower() for h in request.headers.get("Access-Control-Request-Headers", "").split(",") if h.strip()
    ]
    if value is None or method != "PUT" or any(h not in ALLOWED_HEADERS for h in asked):
        return _refuse("this cross-origin upload is not allowed")
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": value,
            "Access-Control-Allow-Methods": "PUT",
            "Access-Control-Allow-Headers": f"Content-Type, {HEADER}",
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
            "Vary": "Origin",
        },
    )


@web.middleware
async def refuse_foreign_origins(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A PUT whose Origin is not allowed is refused unread (a browser would hide the answer anyway)."""
    origin = request.headers.get("Origin")
    if (
        origin is not None
        and request.method == "PUT"
        and request.path.startswith(UPLOAD_PREFIX)
        and allow_origin_value(request.app[keys.SETTINGS].node.cors_origin, origin) is None
    ):
        return _refuse("uploads from this origin are not allowed")
    return await handler(request)


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Add the headers to every upload response, errors included, so the page can read the JSON error."""
    if not request.path.startswith(UPLOAD_PREFIX) or "Access-Control-Allow-Origin" in response.headers:
        return
    value = allow_origin_value(request.app[keys.SETTINGS].node.cors_origin, request.headers.get("Origin"))
    if value is not None and (value == "*" or request.headers.get("Origin")):
        response.headers["Access-Control-Allow-Origin"] = value
        response.headers["Access-Control-Expose-Headers"] = HEADER
        if value != "*":
            response.headers["Vary"] = "Origin"


def install(app: web.Application) -> None:
    app.on_response_prepare.append(on_response_prepare)
