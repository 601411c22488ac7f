"""GET /v1/images: the caller's own images, filtered and paginated (parsing in `search_params`, SQL in
`common.db.search`)."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from common.config import SigningSettings
from common.db import search as db_search
from common.httpkit import json_response
from query_service import keys, search_cursor
from query_service.handlers_images import IMAGE_FIELDS
from query_service.search_params import parse_search


def _cursor_key(signing: SigningSettings, kid: str) -> bytes | None:
    secret = signing.keys.get(kid)
    return secret.reveal().encode() if secret is not None and kid not in signing.retired_kids else None


async def list_images(request: web.Request) -> web.Response:
    app = request.app
    key = await app[keys.AUTH].required(request)
    signing = app[keys.SETTINGS].signing
    search = parse_search(
        request.query, own_app_id=key.app_id, is_admin=key.is_admin, key_for=lambda kid: _cursor_key(signing, kid)
    )
    page = await db_search.search_images(app[keys.POOL], search)
    next_cursor = None
    if page.next is not None:
        active = _cursor_key(signing, signing.active_kid)
        assert active is not None  # the query service refuses to start without an active signing key
        next_cursor = search_cursor.encode(page.next, search.newest_first, signing.active_kid, active)
    images = []
    for row in page.images:
        columns: Mapping[str, object] = row  # the same fields as GET /v1/images/{id}
        images.append({field: columns[field] for field in IMAGE_FIELDS})
    return json_response({"images": images, "next_cursor": next_cursor})
