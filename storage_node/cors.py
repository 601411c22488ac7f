"""CORS for signed uploads: browsers PUT straight to a node from the app's page (another origin).

The signed URL is the only credential (no cookies), so any origin may use it; `node.cors_origin`
narrows or disables this. Only the upload path gets CORS headers: images are shown with <img>, which
needs none, and peer endpoints are not for browsers.
"""

from __future__ import annotations

from aiohttp import web

from common.reqlog import HEADER
from storage_node import keys

UPLOAD_PREFIX = "/upload/"


async def preflight(request: web.Request) -> web.Response:
    origin = request.app[keys.SETTINGS].node.cors_origin
    if not origin:
        return web.Response(status=204)  # no CORS headers: the browser refuses the PUT
    return web.Response(status=204, headers={
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "PUT",
        "Access-Control-Allow-Headers": f"Content-Type, {HEADER}",
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    })


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Add the headers to every upload response, errors included, so the page can read the JSON error."""
    origin = request.app[keys.SETTINGS].node.cors_origin
    if origin and request.path.startswith(UPLOAD_PREFIX):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = HEADER


def install(app: web.Application) -> None:
    app.on_response_prepare.append(on_response_prepare)
