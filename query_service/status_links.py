"""Signed status URLs: let the browser that uploads an image poll that one image's status without an API key.

An app's backend holds the API key and hands its page only the upload ticket. The ticket's ``status_url``
carries a ``status`` signature bound to the image, so the page can follow processing (also of a private
image) while the key never reaches the browser. The signature outlives the upload URL by one more upload
lifetime, so an upload started at the last moment can still be followed through processing.
"""

from __future__ import annotations

from collections.abc import Mapping

from common import signing
from common.config import SigningSettings

SIGNATURE_PARAMS = ("exp", "kid", "sig")


def _claims(image_id: str, exp: int) -> signing.Claims:
    return signing.Claims("status", image_id, "", exp)


def status_query(cfg: SigningSettings, image_id: str, upload_exp: int, now: int) -> dict[str, str]:
    """The query parameters of a signed status URL for an upload whose URL expires at ``upload_exp``."""
    exp = min(upload_exp + cfg.upload_ttl_s, now + cfg.max_ttl_s)
    return signing.sign_with(cfg, _claims(image_id, exp))


def carries_signature(query: Mapping[str, str]) -> bool:
    return any(name in query for name in SIGNATURE_PARAMS)


def verify_status(cfg: SigningSettings, image_id: str, query: Mapping[str, str]) -> None:
    """Raise 403 ``bad_signature`` or ``expired`` unless ``query`` signs a status read of ``image_id``."""
    signing.verify_with(cfg, query, lambda exp: _claims(image_id, exp))
