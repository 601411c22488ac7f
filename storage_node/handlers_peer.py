"""Signed node-to-node endpoints: a peer fetches an original to replicate it (and verifies what it gets
against the record; a copy known to be damaged here is not even offered)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from common import signing
from common.errors import NotFound
from common.ids import check_image_id
from storage_node import keys
from storage_node.objects.openfiles import OpenFile
from storage_node.objects.peer import PEER_SHA_HEADER, PEER_VISIBILITY_HEADER
from storage_node.objects.store import ORIGINAL
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
