"""GET /v1/images/{id}, GET /v1/images/{id}/url and GET /img/{id}: status and nearest-replica URLs."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from common import signing
from common.db import images as db_images
from common.db.api_keys import ApiKey
from common.errors import Conflict, Forbidden, NotFound, Unavailable
from common.holders import rank
from common.hotlink import check_referer
from common.httpkit import json_response
from common.ids import check_image_id
from common.variants import pick_variant
from query_service import keys
from query_service.handlers_uploads import rfc3339
from query_service.requests import UrlQuery, parse_url_query, remote_address

SERVABLE = ("ready",)  # validated, processed and not held: nothing else gets a URL
IMAGE_FIELDS = (
    "image_id",
    "status",
    "reason",
    "visibility",
    "format",
    "width",
    "height",
    "bytes",
    "sha256",
    "created_at",
    "uploaded_at",
    "ready_at",
    "tags",
    "metadata",
    "duplicate_of",
    "replicas",
    "pages",
    "animated",
    "colour_space",
    "exif",
    "had_gps",
)


async def get_image(request: web.Request) -> web.Response:
    app = request.app
    image_id = check_image_id(request.match_info["image_id"])
    key = await app[keys.AUTH].optional(request)
    row = await db_images.get_image(app[keys.POOL], image_id)
    if not await app[keys.AUTH].may_see(key, row["visibility"], row["owner_key_id"]):
        raise NotFound("no such image")  # existence of another app's private image is not revealed
    columns: Mapping[str, object] = row  # the public fields are picked by name
    return json_response({field: columns[field] for field in IMAGE_FIELDS})


async def resolve_url(
    request: web.Request, image_id: str, q: UrlQuery, key: ApiKey | None, public_only: bool = False
) -> dict[str, Any]:
    """The nearest healthy `ok` replica's URL for the variant that fits the box (no Postgres when cached)."""
    app = request.app
    settings, registry = app[keys.SETTINGS], app[keys.REGISTRY]
    auth = app[keys.AUTH]
    loc = await app[keys.LOCATIONS].get(image_id)
    if loc is None or loc.status == "deleted" or not await auth.may_see(key, loc.visibility, loc.owner_key_id):
        raise NotFound("no such image")
    if public_only and loc.visibility != "public":
        raise Forbidden("private images are not served through /img", code="forbidden")
    if q.variant == "original" and not (key is not None and (key.is_admin or await auth.owns(key, loc.owner_key_id))):
        raise Forbidden("the original is only for the image's owner", code="forbidden")
    if public_only:  # /img is what pages embed: hold it to the owner app's Referer allowlist
        check_referer(await auth.app_of_image(loc.owner_key_id), request.headers.get("Referer"))
    if loc.status not in SERVABLE:
        raise Conflict(f"image is {loc.status}", code="not_ready")
    nodes = [registry.nodes[n] for n in loc.ok_nodes if n in registry.nodes]
    healthy = [n for n in nodes if registry.healthy(n)]
    if not healthy:
        raise Unavailable("no healthy node holds this image right now", code="no_replica")
    client_ip = q.client_ip if (q.client_ip and key is not None) else remote_address(request)
    ranked = rank(healthy, app[keys.GEO].locate(client_ip))
    if q.variant == "original":
        variant = "original"
    else:
        variant = pick_variant(
            settings.limits.widths,
            w=q.w,
            h=q.h,
            dpr=q.dpr,
            fit=q.fit,
            fmt=q.fmt,
            accept=request.headers.get("Accept"),
            image_w=loc.width,
            image_h=loc.height,
        )
    # Private images and originals get a signed URL, bound to the image and the variant path (not to a
    # node, so that the alternatives and a node's 307 to a peer work with the same signature).
    expires_at: int | None = None
    query = ""
    if variant == "original" or loc.visibility == "private":
        expires_at = int(time.time()) + settings.signing.download_ttl_s
        claims = signing.Claims("download", image_id, "", expires_at, path=variant)
        query = "?" + urlencode(signing.sign_with(settings.signing, claims))

    def url(base_url: str) -> str:
        return f"{base_url.rstrip('/')}/i/{image_id}/{variant}{query}"

    best, rest = ranked[0], ranked[1:]
    return {
        "url": url(best.node.base_url),
        "node_id": best.node.node_id,
        "region": best.node.region,
        "distance_km": round(best.distance_km, 1),
        "variant": variant,
        "expires_at": rfc3339(expires_at) if expires_at is not None else None,
        "alternatives": [
            {
                "url": url(r.node.base_url),
                "node_id": r.node.node_id,
                "region": r.node.region,
                "distance_km": round(r.distance_km, 1),
            }
            for r in rest
        ],
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
