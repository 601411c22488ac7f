"""GET and PUT /v1/apps/default-image: the default image of the caller's app (an image it owns, public and
ready), given for its missing public images (``common.fallback``)."""

from __future__ import annotations

from aiohttp import web

from common import fallback
from common.db import defaults as db_defaults
from common.errors import InvalidRequest, NotFound
from common.events import AppChanged
from common.httpkit import json_response
from common.ids import is_image_id
from query_service import keys
from query_service.requests import read_json_object, remote_address


def _parse_put(body: dict[str, object]) -> str | None:
    if "image_id" not in body:
        raise InvalidRequest("image_id is required (null clears the default)")
    value = body["image_id"]
    if value is None:
        return None
    if not isinstance(value, str) or not is_image_id(value):
        raise InvalidRequest("image_id must be an image id or null")
    return value


async def get_default_image(request: web.Request) -> web.Response:
    app = request.app
    key = await app[keys.AUTH].required(request)
    row = await db_defaults.get_default(app[keys.POOL], key.app_id)
    return json_response({"app_id": key.app_id, "default_image_id": row["default_image_id"] if row else None})


async def put_default_image(request: web.Request) -> web.Response:
    app = request.app
    auth = app[keys.AUTH]
    key = await auth.required(request)
    image_id = _parse_put(await read_json_object(request))
    async with app[keys.POOL].connection() as conn, conn.transaction():
        if image_id is not None:
            found = await db_defaults.candidate(conn, image_id)
            if found is None:
                raise NotFound("no such image")
            fallback.check_candidate(key.app_id, found["app_id"], found["visibility"], found["status"])
        await db_defaults.set_default(conn, key.app_id, image_id, key_id=key.key_id, client_ip=remote_address(request))
    auth.app_changed(key.app_id)  # this process answers with the new default at once, the others on the event
    bus = app[keys.BUS]
    await bus.announce(bus.subjects.access_event(AppChanged.name), AppChanged(key.app_id), flush=True)
    return json_response({"app_id": key.app_id, "default_image_id": image_id})
