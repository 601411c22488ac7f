"""Copy originals from a peer over the signed node-to-node endpoints, one at a time or several per request,
verifying each SHA-256 on the way."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from common import reqlog
from common.config import Settings
from replicator.peers import Peer
from storage_node.objects.ingest import Ingested, ingest
from storage_node.objects.peer import BATCH_CONTENT_TYPE, PEER_VISIBILITY_HEADER, batch_params, peer_params


@dataclass(frozen=True)
class Fetched(Ingested):
    """The copied bytes, and whether the source holds them as private (unknown counts as private)."""

    private: bool = True


@dataclass(frozen=True)
class Blob:
    """An original fetched in a batch, in memory: not yet verified (hashed off the event loop, before it is
    stored: ``replicator.batch``)."""

    data: bytes
    private: bool


class ChecksumMismatch(Exception):
    """The peer's bytes do not hash to the SHA-256 recorded at upload: never stored."""


async def fetch_original(
    session: aiohttp.ClientSession,
    settings: Settings,
    peer: Peer,
    image_id: str,
    expected_sha256: str,
    max_bytes: int,
    dest: Path,
) -> Fetched:
    kid = settings.signing.active_kid
    key = settings.signing_key(kid)
    assert key is not None  # validated at start-up
    params = peer_params(key, kid, image_id, settings.node.node_id, int(time.time()) + settings.signing.peer_ttl_s)
    url = f"{peer.base_url.rstrip('/')}/peer/objects/{image_id}"
    timeout = aiohttp.ClientTimeout(total=settings.replicator.fetch_timeout_s)
    async with session.get(url, params=params, timeout=timeout, headers=reqlog.outgoing_headers()) as resp:
        resp.raise_for_status()
        private = resp.headers.get(PEER_VISIBILITY_HEADER) != "public"
        got = await ingest(resp.content.iter_chunked(256 * 1024), dest, max_bytes)
    if got.sha256 != expected_sha256:
        raise ChecksumMismatch(f"{peer.node_id} sent {got.sha256[:12]}, expected {expected_sha256[:12]}")
    return Fetched(got.path, got.size, got.sha256, got.head, private=private)


async def fetch_originals(
    session: aiohttp.ClientSession, settings: Settings, peer: Peer, wanted: dict[str, int]
) -> dict[str, Blob]:
    """Several originals from ``peer`` in one request (``wanted``: image id -> recorded size; the caller keeps
    it within ``MAX_BATCH_IDS`` and ``MAX_BATCH_BYTES``). An id the peer did not offer is left out; one
    offered with another size than the record's fails the whole answer."""
    kid = settings.signing.active_kid
    key = settings.signing_key(kid)
    assert key is not None  # validated at start-up
    ids = list(wanted)
    params = batch_params(key, kid, ids, settings.node.node_id, int(time.time()) + settings.signing.peer_ttl_s)
    url = f"{peer.base_url.rstrip('/')}/peer/objects"
    timeout = aiohttp.ClientTimeout(total=settings.replicator.fetch_timeout_s)
    got: dict[str, Blob] = {}
    async with session.get(url, params=params, timeout=timeout, headers=reqlog.outgoing_headers()) as resp:
        resp.raise_for_status()
        if resp.content_type != BATCH_CONTENT_TYPE:
            raise aiohttp.ClientPayloadError(f"{peer.node_id} answered {resp.content_type}, not frames")
        for image_id in ids:
            head = json.loads(await resp.content.readline())
            if head.get("image_id") != image_id:
                raise aiohttp.ClientPayloadError(f"{peer.node_id} answered frames out of order")
            if head.get("found") is False:
                continue
            size = wanted[image_id]
            if head["bytes"] != size:  # never read more than the record says
                raise aiohttp.ClientPayloadError(f"{peer.node_id} offered {head['bytes']} bytes of {image_id}")
            got[image_id] = Blob(await resp.content.readexactly(size), private=head.get("private") is not False)
    return got
