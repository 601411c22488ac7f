"""The opaque cursor of `GET /v1/images`: where the previous page ended and in which order, MAC'd.

A cursor is ``<base64url payload>.<base64url MAC>``; the payload holds the order, the last image's
``created_at`` (in exact microseconds, so the keyset seek neither skips nor repeats a row) and id, and the
signing key id. The MAC (HMAC-SHA256 under that signing key, domain-separated from URL signatures)
makes any edit a `400` rather than a silently different position; every query-service instance shares
the keys, so a cursor works on any of them, and stops working when its key is retired.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from common.db.search import Position
from common.errors import InvalidRequest

MAX_CHARS = 512
_DOMAIN = b"minicdn-search-cursor-v1\n"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_ORDERS = ("newest", "oldest")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, _DOMAIN + payload.encode(), hashlib.sha256).digest()[:16])


def encode(position: Position, newest_first: bool, kid: str, key: bytes) -> str:
    micros = (position.created_at - _EPOCH) // _MICROSECOND
    body = {"o": _ORDERS[0] if newest_first else _ORDERS[1], "t": micros, "i": position.image_id, "k": kid}
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    return f"{payload}.{_mac(key, payload)}"


def decode(cursor: str, key_for: Callable[[str], bytes | None]) -> tuple[Position, bool]:
    """(position, newest_first) of a cursor this service issued; 400 for anything else."""
    bad = InvalidRequest("cursor is not one this service issued (pass next_cursor back unchanged)")
    payload, dot, mac = cursor.partition(".")
    if not dot or len(cursor) > MAX_CHARS:
        raise bad
    try:
        body = json.loads(_unb64(payload))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad from None
    if not isinstance(body, dict) or not isinstance(body.get("k"), str):
        raise bad
    key = key_for(body["k"])
    if key is None or not hmac.compare_digest(_mac(key, payload), mac):
        raise bad
    micros, image_id, order = body.get("t"), body.get("i"), body.get("o")
    if not isinstance(micros, int) or not isinstance(image_id, str) or order not in _ORDERS:
        raise bad  # only a bug of ours could sign this; still never a 500
    try:
        created_at = _EPOCH + micros * _MICROSECOND
    except OverflowError:
        raise bad from None
    return Position(created_at, image_id), order == _ORDERS[0]
