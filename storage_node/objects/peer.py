"""The peer-fetch protocol: how one node asks another for an original (signed query) and what the answer
carries beside the bytes (the recorded hash and the visibility)."""

from __future__ import annotations

from common import signing

PEER_SHA_HEADER = "X-Minicdn-Sha256"
PEER_VISIBILITY_HEADER = "X-Minicdn-Visibility"  # a copy of a private image must stay private


def peer_params(settings_key: bytes, kid: str, image_id: str, requester: str, exp: int) -> dict[str, str]:
    """Query parameters a node adds to a peer request: its own id, bound into the signature."""
    params = signing.sign(signing.Claims("peer", image_id, requester, exp), kid, settings_key)
    return {"node": requester, **params}
