"""GET /v1/images/{id}, GET /v1/images/{id}/url and GET /img/{id}: status and nearest-replica URLs."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from common.db import images as db_images
from common.db.api_keys import ApiKey
from common.errors import Conflict, Forbidden, NotFound, Unavailable
from common.httpkit import json_response
from common.ids import check_image_id
from common.variants import pick_variant
from query_service import keys
from query_service.nearest import rank
from query_service.requests import UrlQuery, parse_url_query

SERVABLE = ("ready",)  # validated, processed and not held: nothing else gets a URL
IMAGE_FIELDS = ("image_id", "status", "reason", "visibility", "format", "width", "height", "bytes", "sha256",
                "created_at", "uploaded_at", "ready_at", "tags", "metadata", "duplicate_of", "replicas",
                "pages", "animated", "colour_space", "exif", "had_gps")


def _may_see(visibility: str, owner_key_id: str | None, key: ApiKey | None) -> bool:
    if visibility == "public":
        return True
    return key is not None and (key.is_admin or key.key_id == owner_key_id)


async def get_image(request: web.Request) -> web.Response:
    app = request.app
    image_id = check_image_id(request.match_info["image_id"])
    key = await app[keys.AUTH].optional(request)
    row = await db_images.get_image(app[keys.POOL], image_id)
    if not _may_see(row["visibility"], row["owner_key_id"], key):
        raise NotFound("no such image")  # existence of another app's private image is not revealed
    return json_response({field: row[field] for field in IMAGE_FIELDS})


async def resolve_url(request: web.Request, image_id: str, q: UrlQuery, key: ApiKey | None,
                      public_only: bool = False) -> dict[str, Any]:
    """The nearest healthy `ok` replica's URL for the variant that fits the box (no Postgres when cached)."""
    app = request.app
    settings, registry = app[keys.SETTINGS], app[keys.REGISTRY]
    loc = await app[keys.LOCATIONS].get(image_id)
    if loc is None or loc.status == "deleted" or not _may_see(loc.visibility, loc.owner_key_id, key):
        raise NotFound("no such image")
    if public_only and loc.visibility != "public":
        raise Forbidden("private images are not served through /img", code="forbidden")
    if loc.status not in SERVABLE:
        raise Conflict(f"image is {loc.status}", code="not_ready")
    nodes = [registry.nodes[n] for n in loc.ok_nodes if n in registry.nodes]
    healthy = [n for n in nodes if registry.healthy(n)]
    if not healthy:
        raise Unavailable("no healthy node holds this image right now", code="no_replica")
    client_ip = q.client_ip if (q.client_ip and key is not None) else request.remote
    ranked = rank(healthy, app[keys.GEO].locate(client_ip))
    variant = pick_variant(settings.limits.widths, w=q.w, h=q.h, dpr=q.dpr, fit=q.fit, fmt=q.fmt,
                           accept=request.headers.get("Accept"), image_w=loc.width, image_h=loc.height)

    def url(base_url: str) -> str:
        return f"{base_url.rstrip('/')}/i/{image_id}/{variant}"

    best, rest = ranked[0], ranked[1:]
    return {
        "url": url(best.node.base_url), "node_id": best.node.node_id, "region": best.node.region,
        "distance_km": round(best.distance_km, 1), "variant": variant, "expires_at": None,
        "alternatives": [{"url": url(r.node.base_url), "node_id": r.node.node_id, "region": r.node.region,
                          "distance_km": round(r.distance_km, 1)} for r in rest],
    }


async def get_url(request: web.Request) -> web.Response:
    image_id = check_image_id(request.match_info["image_id"])
    key = await request.app[keys.AUTH].optional(request)
    return json_response(await resolve_url(request, image_id, parse_url_query(request), key))


async def redirect(request: web.Request) -> web.Response:
    image_id = check_image_id(request.match_info["image_id"])
    key = await request.app[keys.AUTH].optional(request)
    found = await resolve_url(request, image_id, parse_url_query(request), key, public_only=True)
    return web.Response(status=302, headers={"Location": found["url"], "Cache-Control": "no-store"})
