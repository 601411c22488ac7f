"""The peer-fetch protocol: how one node asks another for originals (signed query) and what the answer
carries beside the bytes (the recorded hash and the visibility).

One original: ``GET /peer/objects/{id}``, the bytes as the body. Several (a replicator catching up on a
burst): ``GET /peer/objects?ids=a,b,c``, answered as frames, one per asked id in the asked order: a JSON
line (``{"image_id", "bytes", "sha256", "private"}``, or ``{"image_id", "found": false}``) followed, when
found, by exactly ``bytes`` bytes. The receiver still verifies every copy against the record."""

from __future__ import annotations

import json
from typing import Any

from common import signing

PEER_SHA_HEADER = "X-Minicdn-Sha256"
PEER_VISIBILITY_HEADER = "X-Minicdn-Visibility"  # a copy of a private image must stay private
BATCH_CONTENT_TYPE = "application/x-minicdn-frames"
BATCH_SCOPE = "peer-batch"  # its own scope: a batch signature is never good for one id, nor the reverse
MAX_BATCH_IDS = 64
MAX_BATCH_BYTES = 16 * 1024 * 1024  # the originals of one answer, held in memory on both sides


def peer_params(settings_key: bytes, kid: str, image_id: str, requester: str, exp: int) -> dict[str, str]:
    """Query parameters a node adds to a peer request: its own id, bound into the signature."""
    params = signing.sign(signing.Claims("peer", image_id, requester, exp), kid, settings_key)
    return {"node": requester, **params}


def batch_params(settings_key: bytes, kid: str, image_ids: list[str], requester: str, exp: int) -> dict[str, str]:
    """Query parameters of a request for several originals: the ids, in order, bound into the signature."""
    ids = ",".join(image_ids)
    params = signing.sign(signing.Claims(BATCH_SCOPE, ids, requester, exp), kid, settings_key)
    return {"ids": ids, "node": requester, **params}


def frame_head(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n"
