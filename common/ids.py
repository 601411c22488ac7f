"""Image ids: generation, validation (before any file system or database access) and on-disk shard prefix."""

from __future__ import annotations

import hashlib
import re
import secrets

from common.errors import NotFound

# 22 chars of URL-safe base32-ish alphabet: 110 bits of randomness, no case games on case-insensitive disks.
_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
IMAGE_ID_LENGTH = 22
_IMAGE_ID_RE = re.compile(rf"^[{_ALPHABET}]{{{IMAGE_ID_LENGTH}}}$")


def new_image_id() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(IMAGE_ID_LENGTH))


def is_image_id(value: str) -> bool:
    return bool(_IMAGE_ID_RE.match(value))


def check_image_id(value: str) -> str:
    """Return ``value`` if well-formed, else raise NotFound (a malformed id is simply an unknown one)."""
    if not is_image_id(value):
        raise NotFound("no such image")
    return value


def shard(image_id: str) -> tuple[str, str]:
    """Two levels of fan-out from a hash of the id, so that every directory stays small."""
    digest = hashlib.sha1(image_id.encode(), usedforsecurity=False).hexdigest()
    return digest[:2], digest[2:4]
