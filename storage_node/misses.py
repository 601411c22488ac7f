"""A node asked for an image it does not hold (replication lag, or a lost file), or whose copy here failed a
check against its record (``storage_node.integrity``): `307` to the best healthy member holding a verified
copy (same region first, then nearest: ``common.holders``; never this node), and a background copy here
(read repair) so the next request is served locally. Only this rare path touches Postgres; a hit never
does."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from common.db import replicas as db_replicas
from common.errors import NotFound, SignatureInvalid, Unavailable
from common.geo import Point
from common.holders import rank_holders
from storage_node import keys
from storage_node.integrity import DB_ERRORS, RECORD_TIMEOUT_S, no_good_copy

logger = logging.getLogger(__name__)
SERVABLE = ("uploaded", "processing", "ready")
_background: set[asyncio.Task[Any]] = set()


async def redirect_to_holder(
    request: web.Request, image_id: str, signed: bool = False, corrupt: bool = False
) -> web.Response:
    """``signed``: whether the request carried a valid signature (private images need one, here too).
    ``corrupt``: this node holds the image but its copy failed a check (never a 200 from here): when no
    other holder is usable, or Postgres cannot say which is, `503 no_good_copy`."""
    app = request.app
    settings = app[keys.SETTINGS]
    node = settings.node
    lookup = db_replicas.miss_lookup(app[keys.POOL], image_id, node.node_id)
    if corrupt:
        try:
            row = await asyncio.wait_for(lookup, RECORD_TIMEOUT_S)
        except DB_ERRORS as exc:
            logger.warning("image %s: no holder known while Postgres is unreachable (%r)", image_id, exc)
            raise no_good_copy("this node's copy is damaged and no other holder is known right now") from None
    else:
        row = await lookup
    if row is None or row["status"] not in SERVABLE:
        raise NotFound("no such image on this node")
    sha256, size, content_type = row["sha256"], row["bytes"], row["content_type"]
    if sha256 is None or size is None or content_type is None:  # not uploaded yet (all three come together)
        raise NotFound("no such image on this node")
    if row["visibility"] == "private" and not signed:
        raise SignatureInvalid("this image is served only with a signed URL")
    if row["my_state"] is not None:
        if row["my_state"] == "ok" and corrupt and app[keys.STORE].corrupt_stamp(image_id) is None:
            app[keys.STORE].clear_corrupt(image_id)  # known `corrupt` at start-up, repaired since by another process
        elif row["my_state"] == "ok" and corrupt:  # found bad while Postgres was away: record it now
            await db_replicas.mark_state(app[keys.POOL], image_id, node.node_id, "corrupt")
        elif row["my_state"] == "ok":  # recorded as here, but the file is gone: lost
            logger.warning("image %s is recorded on this node but its file is missing", image_id)
            await db_replicas.mark_state(app[keys.POOL], image_id, node.node_id, "missing")
        _read_repair(app, image_id, sha256, size, content_type)
    holders = db_replicas.as_holders(row["holders"])
    ranked = rank_holders(holders, Point(node.lat, node.lon), settings.health.heartbeat_timeout_s, region=node.region)
    if not ranked and (corrupt or row["my_state"] == "corrupt"):
        raise no_good_copy("this node's copy is damaged and no healthy node holds a verified copy right now")
    if not ranked:
        raise Unavailable("no healthy node holds this image right now", code="no_replica", headers={"Retry-After": "1"})
    location = f"{ranked[0].node.base_url.rstrip('/')}{request.path_qs}"
    return web.Response(status=307, headers={"Location": location, "Cache-Control": "no-store"})


def _read_repair(app: web.Application, image_id: str, sha256: str, size: int, content_type: str) -> None:
    """Copy the image here in the background through this node's replicator (when it runs in-process)."""
    repair = app.get(keys.READ_REPAIR)
    if repair is None:
        return  # a separate replicator process, or the node's primary (this is another worker): a sweep copies it

    async def copy() -> None:
        try:
            await repair(image_id, sha256, size, content_type)
        except Exception as exc:  # the sweep retries
            logger.info("read repair of %s deferred: %s", image_id, exc)

    task = asyncio.create_task(copy(), name=f"read-repair-{image_id}")
    _background.add(task)
    task.add_done_callback(_background.discard)
