"""HMAC-SHA256 signatures with key ids: upload URLs, node-to-node requests, download and status URLs.

A signature covers a versioned, newline-delimited, fixed-order canonical form of the claims, so no
claim can be moved into another. Verification separates "expired" from "invalid" and compares in
constant time. Key ids rotate: the active key signs, every configured key verifies, retired ones never
do. An ``exp`` further ahead than the maximum lifetime (plus a small allowance for a signer whose clock
runs ahead) is refused, so a leaked signing path cannot mint URLs that live forever.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.errors import SignatureExpired, SignatureInvalid

if TYPE_CHECKING:
    from common.config import SigningSettings

SCOPES = ("upload", "peer", "peer-batch", "download", "status")


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


def verify(
    params: Mapping[str, str],
    make_claims: Callable[[int], Claims],
    key_for: Callable[[str], bytes | None],
    now: float | None = None,
    *,
    retired: Collection[str] = (),
    max_ttl_s: int | None = None,
    clock_skew_s: int = 0,
) -> Claims:
    """Check ``exp``/``kid``/``sig`` in ``params`` against the claims the verifier expects.

    ``make_claims(exp)`` rebuilds the claims from what the verifier knows (its own node id, the id in
    the path...), so a URL for another node or image fails as a bad signature. Expiry is strict (the
    signer chose ``exp``); ``clock_skew_s`` only widens the maximum-lifetime bound.
    """
    try:
        exp = int(params["exp"])
        kid = params["kid"]
        sig = params["sig"]
    except (KeyError, ValueError, TypeError):
        raise SignatureInvalid("missing or malformed signature parameters") from None
    if kid in retired:
        raise SignatureInvalid("retired key id")
    key = key_for(kid)
    if key is None:
        raise SignatureInvalid("unknown key id")
    claims = make_claims(exp)
    if not hmac.compare_digest(_mac(key, claims).encode(), sig.encode()):
        raise SignatureInvalid("signature does not match")
    current = time.time() if now is None else now
    if exp < current:
        raise SignatureExpired("signature has expired")
    if max_ttl_s is not None and exp > current + max_ttl_s + clock_skew_s:
        raise SignatureInvalid("expiry is beyond the maximum signature lifetime")
    return claims


def _key_for(cfg: SigningSettings) -> Callable[[str], bytes | None]:
    def key_for(kid: str) -> bytes | None:
        secret = cfg.keys.get(kid)
        return secret.reveal().encode() if secret is not None and kid not in cfg.retired_kids else None

    return key_for


def verify_with(
    cfg: SigningSettings, params: Mapping[str, str], make_claims: Callable[[int], Claims], now: float | None = None
) -> Claims:
    """``verify`` with the configured keys, retired key ids, maximum lifetime and clock-skew allowance."""
    return verify(
        params,
        make_claims,
        _key_for(cfg),
        now,
        retired=cfg.retired_kids,
        max_ttl_s=cfg.max_ttl_s,
        clock_skew_s=cfg.clock_skew_s,
    )


def sign_with(cfg: SigningSettings, claims: Claims) -> dict[str, str]:
    """``sign`` with the active key."""
    key = cfg.keys.get(cfg.active_kid)
    if key is None:  # validated at start-up
        raise ValueError("signing.active_kid has no key")
    return sign(claims, cfg.active_kid, key.reveal().encode())
