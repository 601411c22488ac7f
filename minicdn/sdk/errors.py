"""Typed errors of the SDK: one class per kind of failure, each carrying the API's error code and HTTP status.

The API's codes (docs/api.md, "Error codes") map onto a small hierarchy so an app catches what it can act
on: `Rejected` (the file itself was refused: `TooLarge`, `Unsupported`, `InvalidImage`, or rejected by
processing), `Quarantined`, `NotFound`, `Unauthorized`, `Forbidden`, `Conflict`, `InvalidRequest`,
`RateLimited`, `Unavailable` (and `ConnectionFailed`), `Timeout`, `ServerError`.
"""

from __future__ import annotations

from typing import Any


class MinicdnError(RuntimeError):
    """Base of every SDK error. `code` is the API's error code (or the image status for `Rejected` and
    `Quarantined`, `connection_failed`/`timeout` for client-side failures); `status` the HTTP status or None."""

    def __init__(self, message: str, *, code: str, status: int | None = None, image_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.image_id = image_id

    def __str__(self) -> str:
        where = f"{self.status} " if self.status is not None else ""
        return f"{where}{self.code}: {self.args[0]}"


class InvalidRequest(MinicdnError):
    """400: a parameter or field is malformed, out of range or unknown."""


class Unauthorized(MinicdnError):
    """401: no key where one is needed, or an unknown or revoked key."""


class Forbidden(MinicdnError):
    """403: the key lacks the scope, or a signature is bad or expired."""


class NotFound(MinicdnError):
    """404: unknown or deleted image (or another app's private one)."""


class Conflict(MinicdnError):
    """409: e.g. `not_ready`, `already_uploaded`."""


class Rejected(MinicdnError):
    """The file was refused: at upload (a subclass below) or by processing (`code == "rejected"`).
    `reason` is the API's sentence saying why."""

    def __init__(
        self, reason: str, *, code: str = "rejected", status: int | None = None, image_id: str | None = None
    ) -> None:
        super().__init__(reason, code=code, status=status, image_id=image_id)
        self.reason = reason


class TooLarge(Rejected):
    """413 `too_large`: over the cluster's upload limit."""


class Unsupported(Rejected):
    """415 `unsupported_type`: not JPEG, PNG, GIF, WebP, AVIF or HEIC by its bytes."""


class InvalidImage(Rejected):
    """422 `invalid_image`: an unreadable header, or too many pixels or frames."""


class Quarantined(MinicdnError):
    """A moderation hook held the image (`code == "quarantined"`); an operator approves or rejects it."""


class RateLimited(MinicdnError):
    """429 after the retries: the key is over its rate. `retry_after` is the server's hint in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class Unavailable(MinicdnError):
    """503 after the retries (`no_capacity`, `no_replica`, ...)."""


class ConnectionFailed(Unavailable):
    """The cluster could not be reached (after the retries)."""


class Timeout(MinicdnError):
    """The image did not settle within the wait, or a request body stalled (408)."""


class ServerError(MinicdnError):
    """500: an unexpected failure on the server (`internal_error`, `render_failed`)."""


_BY_CODE: dict[str, type[MinicdnError]] = {
    "too_large": TooLarge,
    "unsupported_type": Unsupported,
    "invalid_image": InvalidImage,
    "rate_limited": RateLimited,
    "timeout": Timeout,
}
_BY_STATUS: dict[int, type[MinicdnError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    415: Unsupported,
    422: InvalidImage,
    429: RateLimited,
    503: Unavailable,
}


def error_for(status: int, body: Any, *, reason: str = "", retry_after: float | None = None) -> MinicdnError:
    """The typed error for an API error response (`{"error": {"code", "message"}}`, or anything else)."""
    err = body.get("error") if isinstance(body, dict) else None
    err = err if isinstance(err, dict) else {}
    code = str(err.get("code") or _fallback_code(status))
    message = str(err.get("message") or reason or f"HTTP {status}")
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status) or (ServerError if status >= 500 else MinicdnError)
    if issubclass(cls, Rejected):
        return cls(message, code=code, status=status)
    if cls is RateLimited:
        return RateLimited(message, code=code, status=status, retry_after=retry_after)
    return cls(message, code=code, status=status)


def _fallback_code(status: int) -> str:
    if status == 503:
        return "unavailable"
    return "internal_error" if status >= 500 else "http_error"
