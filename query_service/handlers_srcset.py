"""GET /v1/images/{id}/srcset: a `srcset` of the image's variants, every URL on the client's nearest healthy
holder (the same checks and ranking as `/url`; the choice of widths is `query_service.srcset`'s)."""

from __future__ import annotations

import time

from aiohttp import web

from common.httpkit import json_response
from common.ids import check_image_id
from query_service import keys
from query_service.handlers_images import find_servable, signed_query
from query_service.handlers_uploads import rfc3339
from query_service.srcset import parse_srcset_query, plan


async def get_srcset(request: web.Request) -> web.Response:
    app = request.app
    settings = app[keys.SETTINGS]
    image_id = check_image_id(request.match_info["image_id"])
    key = await app[keys.AUTH].optional(request)
    q = parse_srcset_query(request.query, settings.query.srcset_widths or settings.limits.widths)
    found = await find_servable(request, image_id, key, q.client_ip)
    loc = found.location
    entries = plan(q, settings.limits.widths, loc.width, loc.height, request.headers.get("Accept"))
    best = found.ranked[0]
    # A private image's URLs are signed, each for its own variant, all with the same expiry.
    expires_at = int(time.time()) + settings.signing.download_ttl_s if loc.visibility == "private" else None
    urls = [
        found.url(
            best.node.base_url,
            e.variant,
            signed_query(settings, image_id, e.variant, expires_at) if expires_at is not None else "",
        )
        for e in entries
    ]
    return json_response(
        {
            "srcset": ", ".join(f"{url} {e.width}w" for url, e in zip(urls, entries, strict=True)),
            "src": urls[-1],
            "widths": [e.width for e in entries],
            "variants": [e.variant for e in entries],
            "node_id": best.node.node_id,
            "region": best.node.region,
            "expires_at": rfc3339(expires_at) if expires_at is not None else None,
        }
    )
