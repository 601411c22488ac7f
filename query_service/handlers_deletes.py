"""DELETE /v1/images/{id}: tombstone, tell the set's members (they remove every file), purge hook."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from common.db import deletions as db_deletions
from common.errors import Forbidden, NotFound
from common.events import ImageDeleted
from common.httpkit import json_response
from common.ids import check_image_id
from query_service import keys, locations
from query_service.auth import owns
from query_service.handlers_uploads import public_base
from query_service.purge import purge_payload, run_purge_hooks
from query_service.requests import remote_address

logger = logging.getLogger(__name__)
_background: set[asyncio.Task[Any]] = set()


async def delete_image(request: web.Request) -> web.Response:
    app = request.app
    image_id = check_image_id(request.match_info["image_id"])
    auth = app[keys.AUTH]
    key = await auth.required(request)
    pool = app[keys.POOL]
    row = await db_deletions.owner_of(pool, image_id)
    if not key.is_admin and not owns(key, row["owner_key_id"], row["app_id"]):  # any key of the owning app
        if row["visibility"] != "public":
            raise NotFound("no such image")  # another app's private image is not revealed
        raise Forbidden("only the owner's API key may delete this image")
    done = await db_deletions.tombstone(
        pool, image_id, actor_key_id=key.key_id, actor_app_id=key.app_id, client_ip=remote_address(request)
    )
    # Stops resolving here at once; in the other processes when the ImageDeleted event reaches them.
    app[keys.LOCATIONS].apply(image_id, locations.gone("deleted"))
    if done is not None:
        try:
            await app[keys.BUS].publish_set_event(done["set_id"], ImageDeleted(image_id, done["set_id"]), image_id)
        except Exception as exc:  # the members' sweep of their delete rows removes the files anyway
            logger.warning("publish of delete %s failed (the sweep will do it): %s", image_id, exc)
        settings = app[keys.SETTINGS]
        if settings.deletes.purge_command or settings.deletes.purge_webhook:
            payload = purge_payload(image_id, done["base_urls"], public_base(request))
            kid = settings.signing.active_kid
            signing_key = settings.signing_key(kid)
            sign = (kid, signing_key) if signing_key else None
            task = asyncio.create_task(run_purge_hooks(settings.deletes, payload, sign), name=f"purge-{image_id}")
            _background.add(task)
            task.add_done_callback(_background.discard)
    return json_response({"image_id": image_id, "status": "deleted"}, status=202)
