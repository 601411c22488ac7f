"""Default images: which missing image falls back to which default, decided in one place for the query
service and the nodes (pure; the callers fetch the rows).

A request for a *public* image that is `deleted`, `rejected` or `expired` gets its app's default image (or the
one the request names with ``default=<image_id>``, when that is a public, `ready` image of the same app), in the
variant of the same size and format, marked with ``X-Minicdn-Fallback: default`` and cached only briefly.
Nothing else falls back: an unknown id has no app to take a default from, a private image answers as it
always did (so a fallback never tells a private image from an unknown id), a quarantined one is held for a
decision, and one not processed yet is `not_ready`.
"""

from __future__ import annotations

from common.errors import Conflict, Forbidden, NotFound

HEADER = "X-Minicdn-Fallback"
HEADER_VALUE = "default"
MISSING = frozenset({"deleted", "rejected", "expired"})  # never were, or are no more, an image to serve


def falls_back(status: str, visibility: str) -> bool:
    """Whether a request for an image in this state may get a default image instead."""
    return visibility == "public" and status in MISSING


def default_usable(requested_app: str | None, default_app: str | None, status: str, visibility: str) -> bool:
    """A default stands in only for images of its own app, and only when anyone may be shown it."""
    return requested_app is not None and default_app == requested_app and status == "ready" and visibility == "public"


def check_candidate(app_id: str, image_app: str | None, visibility: str, status: str) -> None:
    """May ``app_id`` make this image its default? 404 for another app's private image (not revealed), 403 for
    another app's public one, 409 `not_public` for a private one, 409 `not_ready` until it is `ready`."""
    if image_app != app_id:
        if visibility != "public":
            raise NotFound("no such image")
        raise Forbidden("a default image must be one of the app's own images")
    if visibility != "public":
        raise Conflict("a default image must be public: it stands in for public images", code="not_public")
    if status != "ready":
        raise Conflict(f"image is {status}: a default image must be ready", code="not_ready")


def cache_control(max_age_s: int) -> str:
    """Short and revalidated: the app may change its default, and the answer names no immutable content."""
    return f"public, max-age={max_age_s}"


def headers(max_age_s: int) -> dict[str, str]:
    return {HEADER: HEADER_VALUE, "Cache-Control": cache_control(max_age_s)}
