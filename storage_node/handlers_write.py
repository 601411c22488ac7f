"""PUT /upload/{image_id}: verify the signed URL, stream to disk, validate, commit with the outbox, answer, publish.

A PUT refused for its content (too large, not an image type we take, an unreadable or oversized image) uses
up the ticket: the image becomes `rejected` with the reason, and its callback is sent, so a client polling
the status learns the outcome instead of seeing `requested` forever."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from common import signing
from common.db import lifecycle as db_lifecycle
from common.errors import InvalidImage, MinicdnError, PayloadTooLarge, UnsupportedImage
from common.hardening import timed_chunks
from common.ids import check_image_id
from storage_node import keys
from storage_node.commits import Upload
from storage_node.objects.formats import sniff
from storage_node.objects.ingest import ingest
from storage_node.validate import probe_upload

logger = logging.getLogger(__name__)
# Refusals for the content itself: the ticket is used up and the image `rejected` (not for a stalled or cut
# body, a bad signature or a used URL, which say nothing about the image).
CONTENT_REFUSALS = (PayloadTooLarge, UnsupportedImage, InvalidImage)


def _verify_upload_url(request: web.Request, image_id: str) -> int:
    """Check the URL's signature (bound to this node and image); return the signed max_bytes."""
    settings = request.app[keys.SETTINGS]
    params = request.query
    try:
        max_bytes = int(params.get("max", ""))
    except ValueError:
        max_bytes = -1

    def claims(exp: int) -> signing.Claims:
        return signing.Claims("upload", image_id, settings.node.node_id, exp, max_bytes=max_bytes)

    signing.verify_with(settings.signing, params, claims)
    return min(max_bytes, settings.limits.max_upload_bytes)


async def put_upload(request: web.Request) -> web.Response:
    app = request.app
    settings, store, metrics = app[keys.SETTINGS], app[keys.STORE], app[keys.METRICS]
    image_id = check_image_id(request.match_info["image_id"])
    outcome = "error"
    tmp = store.new_tmp_path()
    verified = False
    try:
        max_bytes = _verify_upload_url(request, image_id)
        verified = True
        if request.content_length is not None and request.content_length > max_bytes:
            raise PayloadTooLarge(f"upload is larger than {max_bytes} bytes")
        stages = metrics.stages
        async with stages.awaited("put:check_ticket"):  # with the PUTs that arrive meanwhile (one query)
            await app[keys.COMMITS].check(image_id)
        async with stages.awaited("put:receive"):  # the body streamed to disk and hashed
            got = await ingest(timed_chunks(request.content, settings.http.body_read_timeout_s), tmp, max_bytes)
        async with stages.awaited("put:probe"):
            info = await probe_upload(
                app[keys.PROCESSOR].sandbox,
                tmp,
                sniff(got.head),
                settings.limits.max_pixels,
                settings.limits.max_frames,
            )
        # With the PUTs that queue meanwhile (storage_node.commits). Shielded: a client hanging up mid-commit must
        # not split the file move from the transaction.
        async with stages.awaited("put:transaction"):
            event = await asyncio.shield(app[keys.COMMITS].commit(Upload(image_id, got, info, request.remote)))
        outcome = "ok"
        metrics.uploads_ok += 1
        metrics.upload_bytes.inc(got.size)
    except Exception as exc:
        outcome = getattr(exc, "code", "error")
        if verified and isinstance(exc, CONTENT_REFUSALS):
            await _reject(request, image_id, exc)
        raise
    finally:
        metrics.uploads.labels(outcome).inc()
        if tmp.exists():  # (moved into place by a commit: no thread hop for nothing)
            await asyncio.to_thread(store.discard_tmp, tmp)
    # In the background: the 201 waits for durability only, never for NATS (the sweep covers a lost event).
    app[keys.PUBLISHER].publish(event.set_id, event, image_id)
    if app[keys.ROLE].primary:  # off the request path: the 201 does not wait for it
        app[keys.PROCESSOR].submit(image_id)
    # (Another of the node's processes leaves it to the primary, which hears the event above: storage_node.siblings.)
    return web.json_response(
        {"image_id": image_id, "sha256": got.sha256, "bytes": got.size, "status": "uploaded"}, status=201
    )


async def _reject(request: web.Request, image_id: str, exc: MinicdnError) -> None:
    """Record the refusal as the image's final status (with its callback); the refusal itself is answered
    whatever happens here."""
    app = request.app
    try:
        row = await db_lifecycle.reject_upload(
            app[keys.POOL], image_id, app[keys.SETTINGS].node.node_id, f"{exc.code}: {exc.message}"
        )
    except Exception as db_exc:  # the ticket stays `requested` and expires in the lifecycle sweep
        logger.warning("recording the refusal of %s failed: %s", image_id, db_exc)
        return
    if row is not None and row["callback_url"]:
        app[keys.CALLBACKS].wake()
