"""Admin decisions on quarantined images: `POST /v1/images/{id}/approve` and `POST /v1/images/{id}/reject`.

Approve makes the image `ready` (nodes serve it within their gate's recheck time); reject makes it
`rejected` and publishes ``ImageRejected`` so every member of its set removes the files. Both record the
image's callback in the decision's transaction (``common.callback_outbox`` delivers it).
"""

from __future__ import annotations

from typing import NoReturn

from aiohttp import web

from common.db import images as db_images
from common.db import pipeline as db_pipeline
from common.errors import Conflict
from common.events import ImageProcessed, ImageRejected
from common.httpkit import json_response
from common.ids import check_image_id
from query_service import keys, locations
from query_service.requests import read_json_object


async def approve(request: web.Request) -> web.Response:
    app = request.app
    await app[keys.AUTH].required(request, scope="admin")
    image_id = check_image_id(request.match_info["image_id"])
    row = await db_pipeline.approve(app[keys.POOL], image_id)
    if row is None:
        await _explain(request, image_id)
    # Served from now on: here at once, in the other query-service processes on the event.
    event = ImageProcessed(image_id, row["status"], row["width"], row["height"])
    app[keys.LOCATIONS].apply(image_id, locations.processed(event.status, event.width, event.height))
    bus = app[keys.BUS]
    await bus.announce(bus.subjects.image_event(ImageProcessed.name), event)
    app[keys.CALLBACKS].wake()  # the callback was recorded with the decision
    return json_response({"image_id": image_id, "status": row["status"]})


async def reject(request: web.Request) -> web.Response:
    app = request.app
    await app[keys.AUTH].required(request, scope="admin")
    image_id = check_image_id(request.match_info["image_id"])
    body = await read_json_object(request, 4096)
    reason = str(body.get("reason") or "rejected by an operator")
    row = await db_pipeline.reject(app[keys.POOL], image_id, reason, from_status=("quarantined",))
    if row is None:
        await _explain(request, image_id)
    app[keys.LOCATIONS].apply(image_id, locations.gone("rejected"))  # the others on the event below
    await app[keys.BUS].publish_set_event(row["set_id"], ImageRejected(image_id, row["set_id"], reason), image_id)
    app[keys.CALLBACKS].wake()
    return json_response({"image_id": image_id, "status": row["status"], "reason": reason})


async def _explain(request: web.Request, image_id: str) -> NoReturn:
    """404 for an unknown image, 409 for one that is not quarantined."""
    row = await db_images.get_image(request.app[keys.POOL], image_id)  # raises NotFound
    raise Conflict(f"image is {row['status']}, not quarantined", code="not_quarantined")
