"""A node asked for a variant of an image it cannot serve because the image is missing (deleted, rejected or
expired: ``common.fallback``): `307` to the same variant of the app's default image (or of the request's
``default=``) on its best holder, with ``X-Minicdn-Fallback: default`` and a short cache lifetime. The target
is an ordinary image URL, immutable and cached like any other; only this redirect is short-lived.

Only the 404 path comes here (a hit never does), and it costs one indexed query. Originals, sizes an unsigned
URL may not ask for, private and quarantined images never fall back: they get the answer they always got.
"""

from __future__ import annotations

from aiohttp import web

from common import fallback
from common.db import defaults as db_defaults
from common.db import replicas as db_replicas
from common.errors import MinicdnError
from common.geo import Point
from common.holders import rank_holders
from common.ids import is_image_id
from common.variants import check_size, parse_variant
from storage_node import keys
from storage_node.objects.store import ORIGINAL


async def redirect_to_default(request: web.Request) -> web.Response | None:
    """The fallback answer for a request that was about to get `404`, or None to let the 404 stand."""
    image_id, name = request.match_info.get("image_id", ""), request.match_info.get("variant", "")
    if not is_image_id(image_id) or name == ORIGINAL:
        return None
    settings = request.app[keys.SETTINGS]
    try:  # the stand-in is served unsigned: only what an unsigned URL may ask for
        check_size(parse_variant(name), settings.limits.widths, settings.limits.max_variant_side, signed=False)
    except MinicdnError:
        return None
    requested = request.query.get("default")  # a malformed one is ignored here: the app's default applies
    row = await db_defaults.fallback_for(
        request.app[keys.POOL], image_id, requested if requested and is_image_id(requested) else None
    )
    if row is None:
        return None
    node = settings.node
    ranked = rank_holders(
        db_replicas.as_holders(row["holders"]),
        Point(node.lat, node.lon),
        settings.health.heartbeat_timeout_s,
        region=node.region,
    )
    if not ranked:
        return None  # no healthy holder of the default right now: the plain 404
    location = f"{ranked[0].node.base_url.rstrip('/')}/i/{row['default_image_id']}/{name}"
    return web.Response(status=307, headers={"Location": location, **fallback.headers(settings.fallback.max_age_s)})
