"""HMAC-SHA256 signatures with key ids: upload URLs, node-to-node requests, later download URLs.

A signature covers a versioned, newline-delimited, fixed-order canonical form of the claims, so no
claim can be moved into another. Verification separates "expired" from "invalid" and compares in
constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from common.errors import SignatureExpired, SignatureInvalid

SCOPES = ("upload", "peer", "download")


@dataclass(frozen=True)
class Claims:
    scope: str
    image_id: str
    node_id: str
    exp: int
    max_bytes: int = 0
    path: str = ""

    def canonical(self) -> bytes:
        fields = ("v1", self.scope, self.image_id, self.node_id, self.path, str(self.max_bytes), str(self.exp))
        return "\n".join(fields).encode()


def _mac(key: bytes, claims: Claims) -> str:
    digest = hmac.new(key, claims.canonical(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(claims: Claims, kid: str, key: bytes) -> dict[str, str]:
    """The query parameters that carry ``claims`` (the claims themselves are bound, not all sent)."""
    if claims.scope not in SCOPES:
        raise ValueError(f"unknown scope {claims.scope!r}")
    return {"exp": str(claims.exp), "kid": kid, "sig": _mac(key, claims)}


def verify(params: Mapping[str, str], make_claims: Callable[[int], Claims],
           key_for: Callable[[str], bytes | None], now: float | None = None) -> Claims:
    """Check ``exp``/``kid``/``sig`` in ``params`` against the claims the verifier expects.

    ``make_claims(exp)`` rebuilds the claims from what the verifier knows (its own node id, the id in
    the path...), so a URL for another node or image fails as a bad signature.
    """
    try:
        exp = int(params["exp"])
        kid = params["kid"]
        sig = params["sig"]
    except (KeyError, ValueError):
        raise SignatureInvalid("missing or malformed signature parameters") from None
    key = key_for(kid)
    if key is None:
        raise SignatureInvalid("unknown key id")
    claims = make_claims(exp)
    if not hmac.compare_digest(_mac(key, claims).encode(), sig.encode()):
        raise SignatureInvalid("signature does not match")
    if exp < (time.time() if now is None else now):
        raise SignatureExpired("signature has expired")
    return claims
