"""POST /v1/uploads: create the image row (`requested`), place it, return a signed upload URL (and a signed
status URL the uploading browser may poll without the API key)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from urllib.parse import urlencode

from aiohttp import web

from common import reqlog, signing
from common.callbacks import check_callback_url
from common.db import audit
from common.db import images as db_images
from common.errors import Unavailable
from common.httpkit import json_response
from common.ids import new_image_id
from query_service import keys
from query_service.placement import place
from query_service.requests import parse_upload_request, remote_address
from query_service.status_links import status_query

BACKLOG_RETRY_S = 5  # a node's backlog is seen at its heartbeats: a few of them apart


def public_base(request: web.Request) -> str:
    configured = request.app[keys.SETTINGS].query.public_url
    return configured.rstrip("/") if configured else f"{request.scheme}://{request.host}"


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


async def create_upload(request: web.Request) -> web.Response:
    app = request.app
    settings, registry = app[keys.SETTINGS], app[keys.REGISTRY]
    api_key = await app[keys.AUTH].required(request)
    max_bytes = settings.limits.max_upload_bytes
    body = await parse_upload_request(request, max_bytes)
    if body.callback_url is not None:  # SSRF guard: no loopback/link-local/private targets (unless allowed)
        await check_callback_url(body.callback_url, settings.callbacks.allow_private)
    remote = remote_address(request)
    uploader = app[keys.GEO].locate(body.client_ip or remote)
    # Without a stated size, a typical upload's room: asking for the whole cap would refuse every such upload
    # on a small node (the cap still bounds the PUT, and the capacity marks are the backstop).
    need = body.size if body.size is not None else min(settings.limits.unsized_upload_bytes, max_bytes)
    chosen = place(registry.nodes.values(), uploader, need, registry.healthy)
    if chosen is None:
        if place(registry.nodes.values(), uploader, need, registry.healthy, backlog=False) is not None:
            raise Unavailable(
                "every node that could take this upload is behind on processing uploads; retry shortly",
                code="processing_backlog",
                headers={"Retry-After": str(BACKLOG_RETRY_S)},
            )
        raise Unavailable("no healthy node with room can take this upload", code="no_capacity")
    node = chosen.node
    image_id = new_image_id()
    now = int(time.time())
    exp = now + settings.signing.upload_ttl_s
    # The image row and its `upload.request` audit row commit (or roll back) together in one round trip: in
    # autocommit, the statements of a pipeline up to its Sync are one implicit transaction (no BEGIN and
    # COMMIT round trips of their own).
    async with app[keys.POOL].connection() as conn, conn.pipeline():
        await db_images.create_requested(
            conn,
            db_images.NewImage(
                image_id=image_id,
                owner_key_id=api_key.key_id,
                set_id=node.set_id,
                origin_node=node.node_id,
                max_bytes=max_bytes,
                visibility=body.visibility,
                filename=body.filename,
                tags=body.tags,
                metadata=body.metadata,
                callback_url=body.callback_url,
                expires_at=exp,  # the lifecycle sweep expires the ticket if it is not used by then
            ),
        )
        await audit.record(
            conn,
            "upload.request",
            app_id=api_key.app_id,
            key_id=api_key.key_id,
            image_id=image_id,
            node_id=node.node_id,
            client_ip=remote,
            detail={"visibility": body.visibility, "size": body.size},
        )
    claims = signing.Claims("upload", image_id, node.node_id, exp, max_bytes=max_bytes)
    # `rid` (not signed, only logged) lets the node's log line for the PUT name this request's id.
    query = urlencode(
        {"max": max_bytes, **signing.sign_with(settings.signing, claims), reqlog.QUERY_PARAM: reqlog.current() or ""}
    )
    app[keys.QUERY_METRICS].upload_tickets.inc()
    return json_response(
        {
            "image_id": image_id,
            "upload_url": f"{node.base_url.rstrip('/')}/upload/{image_id}?{query}",
            "upload_method": "PUT",
            "expires_at": rfc3339(exp),
            "max_bytes": max_bytes,
            "node_id": node.node_id,
            "region": node.region,
            "status": "requested",
            "status_url": f"{public_base(request)}/v1/images/{image_id}",
            # The same read, signed for this image: the uploading page polls it without the API key.
            "signed_status_url": f"{public_base(request)}/v1/images/{image_id}?"
            + urlencode(status_query(settings.signing, image_id, exp, now)),
        },
        status=201,
    )
