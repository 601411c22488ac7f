"""Signed node-to-node endpoints: a peer fetches an original, or several at once, to replicate them (and
verifies what it gets against the record; a copy known to be damaged here is not even offered)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from common import signing
from common.errors import InvalidRequest, NotFound
from common.ids import check_image_id, is_image_id
from storage_node import keys
from storage_node.objects.openfiles import OpenFile
from storage_node.objects.peer import (
    BATCH_CONTENT_TYPE,
    BATCH_SCOPE,
    MAX_BATCH_BYTES,
    MAX_BATCH_IDS,
    PEER_SHA_HEADER,
    PEER_VISIBILITY_HEADER,
    frame_head,
)
from storage_node.objects.store import ORIGINAL, ObjectMeta, SidecarLost, Store
from storage_node.sendfile import SendFile
from storage_node.tierfile import open_first


async def get_original(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings, store = app[keys.SETTINGS], app[keys.STORE]
    image_id = check_image_id(request.match_info["image_id"])
    requester = request.query.get("node", "")
    signing.verify_with(settings.signing, request.query, lambda exp: signing.Claims("peer", image_id, requester, exp))
    if await app[keys.INTEGRITY].refused(image_id):
        raise NotFound("this node's copy of the image is damaged")
    meta = store.cached_meta(image_id) or await app[keys.INTEGRITY].meta(image_id)
    if meta is None:
        raise NotFound("no such image on this node")
    try:  # either tier: a move in flight never fails the copy
        opened = await asyncio.to_thread(open_first, store.original_paths(image_id))
    except FileNotFoundError:
        raise NotFound("no such image on this node") from None
    headers = {
        "Content-Type": meta.content_type,
        PEER_SHA_HEADER: meta.sha256,
        "Cache-Control": "no-store",
        PEER_VISIBILITY_HEADER: "private" if meta.private else "public",
    }
    # Not kept in the read path's cache (copies are one-off reads): this response owns the descriptor.
    return SendFile(OpenFile((image_id, ORIGINAL), opened.fobj, opened.st.st_size, "", headers))


async def get_originals(request: web.Request) -> web.StreamResponse:
    """Several originals in one answer (``storage_node.objects.peer``): what is not offered here (unknown,
    known damaged, a lost sidecar, a size that is not the record's, past the answer's byte cap) is a frame
    saying so, and the asker copies that one through the single-original endpoint."""
    app = request.app
    settings, store, integrity = app[keys.SETTINGS], app[keys.STORE], app[keys.INTEGRITY]
    ids_param = request.query.get("ids", "")
    ids = ids_param.split(",")
    if not ids_param or len(ids) > MAX_BATCH_IDS or len(set(ids)) != len(ids) or not all(map(is_image_id, ids)):
        raise InvalidRequest(f"ids must be 1 to {MAX_BATCH_IDS} distinct image ids, comma-separated")
    requester = request.query.get("node", "")
    signing.verify_with(
        settings.signing, request.query, lambda exp: signing.Claims(BATCH_SCOPE, ids_param, requester, exp)
    )
    offered = [image_id for image_id in ids if not await integrity.refused(image_id)]
    found = await asyncio.to_thread(_read_originals, store, offered)
    resp = web.StreamResponse(headers={"Content-Type": BATCH_CONTENT_TYPE, "Cache-Control": "no-store"})
    await resp.prepare(request)
    for image_id in ids:
        got = found.get(image_id)
        if got is None:
            await resp.write(frame_head({"image_id": image_id, "found": False}))
            continue
        meta, data = got
        head = {"image_id": image_id, "bytes": len(data), "sha256": meta.sha256, "private": meta.private}
        await resp.write(frame_head(head) + data)
    await resp.write_eof()
    return resp


def _read_originals(store: Store, image_ids: list[str]) -> dict[str, tuple[ObjectMeta, bytes]]:
    """The originals (either tier) whose size is the record's, up to ``MAX_BATCH_BYTES`` in all. Blocking."""
    found: dict[str, tuple[ObjectMeta, bytes]] = {}
    total = 0
    for image_id in image_ids:
        try:
            meta = store.meta(image_id)
        except SidecarLost:  # restored from the record by the single endpoint, not here
            continue
        if meta is None or total + meta.bytes > MAX_BATCH_BYTES:
            continue
        try:
            opened = open_first(store.original_paths(image_id))
        except FileNotFoundError:
            continue
        with opened.fobj:
            data = opened.fobj.read(meta.bytes + 1)
        if len(data) == meta.bytes:
            found[image_id] = (meta, data)
            total += len(data)
    return found
