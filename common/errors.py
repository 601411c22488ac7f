"""One error tree for every process; the single place where errors meet HTTP status codes and docs/api.md codes."""

from __future__ import annotations

from typing import Any


class MinicdnError(Exception):
    """Base error: ``status`` is the HTTP status, ``code`` the docs/api.md machine code."""

    status = 500
    code = "internal_error"

    def __init__(
        self, message: str = "internal error", *, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message)


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class InvalidRequest(MinicdnError):
    status, code = 400, "invalid_request"


class SizeNotAllowed(MinicdnError):
    status, code = 400, "size_not_allowed"


class Unauthorized(MinicdnError):
    status, code = 401, "unauthorized"


class Forbidden(MinicdnError):
    status, code = 403, "forbidden"


class SignatureInvalid(Forbidden):
    code = "bad_signature"


class SignatureExpired(Forbidden):
    code = "expired"


class NotFound(MinicdnError):
    status, code = 404, "not_found"


class Conflict(MinicdnError):
    status, code = 409, "conflict"


class PayloadTooLarge(MinicdnError):
    status, code = 413, "too_large"


class UnsupportedImage(MinicdnError):
    status, code = 415, "unsupported_type"


class InvalidImage(MinicdnError):
    status, code = 422, "invalid_image"


class Unavailable(MinicdnError):
    status, code = 503, "unavailable"


class DatabaseUnavailable(Unavailable):
    """Postgres cannot be reached (or no connection came free in time): retry in a moment."""

    code = "database_unavailable"

    def __init__(self, message: str = "the database is unavailable right now; retry shortly") -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class RequestTimeout(MinicdnError):
    status, code = 408, "timeout"


class RangeNotSatisfiable(MinicdnError):
    status, code = 416, "range_not_satisfiable"


class TooManyRequests(MinicdnError):
    status, code = 429, "rate_limited"


class HeadersTooLarge(MinicdnError):
    status, code = 431, "headers_too_large"
