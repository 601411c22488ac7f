"""Copy an original from a peer over the signed node-to-node endpoint, verifying its SHA-256 on the way."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from common import reqlog
from common.config import Settings
from replicator.peers import Peer
from storage_node.objects.ingest import Ingested, ingest
from storage_node.objects.peer import PEER_VISIBILITY_HEADER, peer_params


@dataclass(frozen=True)
class Fetched(Ingested):
    """The copied bytes, and whether the source holds them as private (unknown counts as private)."""

    private: bool = True


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
