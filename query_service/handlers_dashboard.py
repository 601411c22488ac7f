"""GET /dashboard (the operator page), GET /v1/dashboard (its JSON, admin key), GET /upload-demo (dev
mode) and their assets, among them the browser upload module apps import (`/assets/minicdn-upload.js`).
The pages are plain files shipped in the package: no external assets, so they work offline; the data
comes only from the JSON endpoint, which needs an admin key."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from common.errors import NotFound
from common.httpkit import json_response
from query_service import keys
from query_service.dashboard import build_dashboard

ASSET_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The dashboard talks only to its own origin; the upload demo also PUTs to nodes and shows their images.
CSP_DASHBOARD = "default-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"
CSP_UPLOAD = (
    "default-src 'self'; connect-src 'self' http: https:; img-src 'self' http: https: data: blob:;"
    " base-uri 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every file of query_service/static, read once at start-up."""
    assets = {}
    for entry in resources.files("query_service").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in ASSET_TYPES:
            body = entry.read_bytes()
            assets[entry.name] = Asset(body, ASSET_TYPES[suffix], hashlib.sha256(body).hexdigest()[:16])
    return assets


def _send(request: web.Request, name: str, csp: str | None = None, cors: bool = False) -> web.Response:
    asset = request.app[keys.ASSETS].get(name)
    if asset is None:
        raise NotFound("no such asset")
    headers = {
        "Content-Type": asset.content_type,
        "ETag": f'"{asset.etag}"',
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if csp:
        headers["Content-Security-Policy"] = csp
    if cors:  # an app's page on another origin imports the module: module scripts are fetched with CORS
        headers["Access-Control-Allow-Origin"] = "*"
    if any(tag.value == asset.etag for tag in request.if_none_match or ()):
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers=headers)


async def dashboard_page(request: web.Request) -> web.Response:
    return _send(request, "dashboard.html", CSP_DASHBOARD)


async def upload_demo_page(request: web.Request) -> web.Response:
    if not request.app[keys.SETTINGS].query.upload_demo:
        raise NotFound("the upload demo is off (query.upload_demo)")
    return _send(request, "upload.html", CSP_UPLOAD)


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name.endswith(".html"):
        raise NotFound("no such asset")  # pages have their own routes (and headers)
    return _send(request, name, cors=True)  # public files with no secrets


async def dashboard_data(request: web.Request) -> web.Response:
    await request.app[keys.AUTH].required(request, scope="admin")
    registry = request.app[keys.REGISTRY]
    data = build_dashboard(
        registry.nodes.values(),
        registry.healthy,
        registry.heartbeat_age_s,
        request.app[keys.CLUSTER_STATS],
        request.app[keys.HISTORY],
    )
    return json_response(data, headers={"Cache-Control": "no-store"})
