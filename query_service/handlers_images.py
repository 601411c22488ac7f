"""GET /v1/images/{id} (with a key, or the signed status URL of an upload ticket), GET /v1/images/{id}/url
and GET /img/{id}: status and nearest-replica URLs.

The URL answers read memory only for an image and a key seen before (``query_service.locations``, ``auth``,
the node registry): no Postgres query, so they keep answering while Postgres is down. The status answer is the
full row, read from Postgres each time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from common import fallback, signing
from common.config import Settings
from common.db import images as db_images
from common.db.api_keys import ApiKey
from common.errors import Conflict, Forbidden, MinicdnError, NotFound, Unavailable
from common.holders import Ranked, rank
from common.hotlink import check_referer
from common.httpkit import json_response
from common.ids import check_image_id
from common.variants import pick_variant
from query_service import keys
from query_service.auth import may_see, owns
from query_service.handlers_uploads import rfc3339
from query_service.locations import Location
from query_service.registry import NodeInfo
from query_service.requests import UrlQuery, parse_url_query, remote_address
from query_service.status_links import carries_signature, verify_status

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
    "stored_bytes",
    "pages",
    "animated",
    "colour_space",
    "exif",
    "had_gps",
)


# Any page may read this endpoint cross-origin: credentials are a bearer key or a signed status URL, never
# cookies, so `*` lends a foreign page nothing it does not already hold. Only simple GETs (no Authorization
# header, so no preflight) need it: a browser polling its upload's signed `status_url`.
STATUS_CORS = {"Access-Control-Allow-Origin": "*"}


async def get_image(request: web.Request) -> web.Response:
    try:
        return await _get_image(request)
    except MinicdnError as exc:  # errors too, so the page can read the JSON error
        exc.headers.update(STATUS_CORS)
        raise


async def _get_image(request: web.Request) -> web.Response:
    app = request.app
    image_id = check_image_id(request.match_info["image_id"])
    signed = carries_signature(request.query)
    if signed:  # checked before any database access: a bad signature reveals nothing about the image
        verify_status(app[keys.SETTINGS].signing, image_id, request.query)
    key = await app[keys.AUTH].optional(request)
    row = await db_images.get_image(app[keys.POOL], image_id)
    if not signed and not may_see(key, row["visibility"], row["owner_key_id"], row["app_id"]):
        raise NotFound("no such image")  # existence of another app's private image is not revealed
    columns: Mapping[str, object] = row  # the public fields are picked by name
    return json_response({field: columns[field] for field in IMAGE_FIELDS}, headers=STATUS_CORS)


@dataclass(frozen=True)
class Servable:
    """A `ready` image the caller may see, and its healthy `ok` holders, nearest to the client first."""

    image_id: str
    location: Location
    ranked: list[Ranked[NodeInfo]]

    def url(self, base_url: str, variant: str, query: str) -> str:
        return f"{base_url.rstrip('/')}/i/{self.image_id}/{variant}{query}"


async def find_servable(
    request: web.Request,
    image_id: str,
    key: ApiKey | None,
    client_ip: str | None,
    *,
    public_only: bool = False,
    original: bool = False,
) -> Servable:
    """The checks every URL answer makes (visibility, ownership of originals, hotlinking, status, health) and
    the ranking of the holders (from memory once the image and its app were seen)."""
    app = request.app
    loc = await app[keys.LOCATIONS].get(image_id)
    check_visible(loc, key, public_only=public_only, original=original)
    assert loc is not None  # (checked)
    if public_only:  # /img is what pages embed: hold it to the owner app's Referer allowlist
        check_referer(await app[keys.AUTH].app(loc.app_id), request.headers.get("Referer"))
    return rank_servable(app, image_id, loc, key, client_ip, remote_address(request))


def check_visible(loc: Location | None, key: ApiKey | None, *, public_only: bool, original: bool) -> None:
    """404 for an image the caller may not know of; 403 for a private one through /img, or an original asked for
    by another than its owner."""
    if loc is None or loc.status == "deleted" or not may_see(key, loc.visibility, loc.owner_key_id, loc.app_id):
        raise NotFound("no such image")
    if public_only and loc.visibility != "public":
        raise Forbidden("private images are not served through /img", code="forbidden")
    if original and not (key is not None and (key.is_admin or owns(key, loc.owner_key_id, loc.app_id))):
        raise Forbidden("the original is only for the image's owner", code="forbidden")


def rank_servable(
    app: web.Application, image_id: str, loc: Location, key: ApiKey | None, client_ip: str | None, remote: str | None
) -> Servable:
    """409 unless `ready`, 503 without a healthy holder; else the holders nearest to the client (``client_ip``
    when a key vouches for it, else the caller's address ``remote``) first. Memory only."""
    if loc.status not in SERVABLE:
        raise Conflict(f"image is {loc.status}", code="not_ready")
    registry = app[keys.REGISTRY]
    nodes = [registry.nodes[n] for n in loc.ok_nodes if n in registry.nodes]
    healthy = [n for n in nodes if registry.healthy(n)]
    if not healthy:
        raise Unavailable("no healthy node holds this image right now", code="no_replica")
    client_ip = client_ip if (client_ip and key is not None) else remote
    return Servable(image_id, loc, rank(healthy, app[keys.GEO].locate(client_ip)))


def signed_query(settings: Settings, image_id: str, variant: str, expires_at: int) -> str:
    """The `?exp=..&kid=..&sig=..` of a download URL, bound to the image and the variant path (not to a
    node, so that the alternatives and a node's 307 to a peer work with the same signature)."""
    claims = signing.Claims("download", image_id, "", expires_at, path=variant)
    return "?" + urlencode(signing.sign_with(settings.signing, claims))


async def resolve_url(
    request: web.Request, image_id: str, q: UrlQuery, key: ApiKey | None, public_only: bool = False
) -> dict[str, Any]:
    """The nearest healthy `ok` replica's URL for the variant that fits the box (no Postgres when known)."""
    original = q.variant == "original"
    stand_in: str | None = None
    try:
        found = await find_servable(request, image_id, key, q.client_ip, public_only=public_only, original=original)
    except (NotFound, Conflict):  # deleted, or rejected/expired: a public image may have a default to stand in
        stand_in = None if original else await _default_for(request, image_id, q.default)
        if stand_in is None:
            raise
        found = await find_servable(request, stand_in, key, q.client_ip, public_only=public_only)
    return url_answer(request.app[keys.SETTINGS], image_id, q, found, request.headers.get("Accept"), stand_in)


def url_answer(
    settings: Settings, image_id: str, q: UrlQuery, found: Servable, accept: str | None, stand_in: str | None = None
) -> dict[str, Any]:
    """The answer's document: the best holder's URL of the variant that fits the box, and the others'."""
    loc = found.location
    original = q.variant == "original"
    if original:
        variant = "original"
    else:
        variant = pick_variant(
            settings.limits.widths,
            w=q.w,
            h=q.h,
            dpr=q.dpr,
            fit=q.fit,
            fmt=q.fmt,
            accept=accept,
            image_w=loc.width,
            image_h=loc.height,
        )
    # Private images and originals get a signed URL.
    expires_at: int | None = None
    query = ""
    if original or loc.visibility == "private":
        expires_at = int(time.time()) + settings.signing.download_ttl_s
        query = signed_query(settings, image_id, variant, expires_at)
    best, rest = found.ranked[0], found.ranked[1:]
    marker = {} if stand_in is None else {"fallback": fallback.HEADER_VALUE, "default_image_id": stand_in}
    return {
        **marker,
        "url": found.url(best.node.base_url, variant, query),
        "node_id": best.node.node_id,
        "region": best.node.region,
        "distance_km": round(best.distance_km, 1),
        "variant": variant,
        "expires_at": rfc3339(expires_at) if expires_at is not None else None,
        "alternatives": [
            {
                "url": found.url(r.node.base_url, variant, query),
                "node_id": r.node.node_id,
                "region": r.node.region,
                "distance_km": round(r.distance_km, 1),
            }
            for r in rest
        ],
    }


async def _default_for(request: web.Request, image_id: str, requested: str | None) -> str | None:
    """The image standing in for missing ``image_id``: the request's ``default=`` if usable, else its app's
    default if usable (``common.fallback``). Only the 404/409 path comes here; the lookups are the memory's."""
    auth, locations = request.app[keys.AUTH], request.app[keys.LOCATIONS]
    loc = await locations.get(image_id)
    if loc is None or not fallback.falls_back(loc.status, loc.visibility):
        return None
    owner_app = await auth.app(loc.app_id)
    for candidate in (requested, owner_app.default_image_id if owner_app else None):
        if candidate is None or candidate == image_id:
            continue
        found = await locations.get(candidate)
        if found is not None and fallback.default_usable(loc.app_id, found.app_id, found.status, found.visibility):
            return candidate  # same app: find_servable holds /img to the same Referer allowlist
    return None


async def get_url(request: web.Request) -> web.Response:
    image_id = check_image_id(request.match_info["image_id"])
    key = await request.app[keys.AUTH].optional(request)
    found = await resolve_url(request, image_id, parse_url_query(request), key)
    return json_response(found, headers=_fallback_headers(request, found))


async def redirect(request: web.Request) -> web.Response:
    image_id = check_image_id(request.match_info["image_id"])
    key = await request.app[keys.AUTH].optional(request)
    found = await resolve_url(request, image_id, parse_url_query(request), key, public_only=True)
    headers = {"Location": found["url"], "Cache-Control": "no-store", **_fallback_headers(request, found)}
    return web.Response(status=302, headers=headers)


def _fallback_headers(request: web.Request, found: dict[str, Any]) -> dict[str, str]:
    """A default image given for a missing one says so, and is cached only briefly (never immutable)."""
    if "fallback" not in found:
        return {}
    return fallback.headers(request.app[keys.SETTINGS].fallback.max_age_s)
