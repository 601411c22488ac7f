"""Parsing and validating request input (bodies, query parameters) into typed values; 400 on anything bad."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from common.clientaddr import client_address
from common.errors import InvalidRequest, PayloadTooLarge
from common.hardening import read_small_body
from common.ids import is_image_id
from query_service import keys

MAX_BODY_BYTES = 64 * 1024
MAX_TAGS = 20
MAX_METADATA_BYTES = 8 * 1024


@dataclass(frozen=True)
class UploadRequest:
    filename: str | None
    size: int | None
    visibility: str
    tags: tuple[str, ...]
    metadata: dict[str, Any]
    callback_url: str | None
    client_ip: str | None


def check_storable(body: Any) -> None:
    """Postgres text and jsonb take neither NUL characters nor lone UTF-16 surrogates (which JSON can
    spell as escapes): refuse them here as a bad request instead of failing at the INSERT."""
    stack = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            if "\x00" in value:
                raise InvalidRequest("strings must not contain NUL characters")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRequest("strings must be valid Unicode (no lone surrogates)") from None


def _opt_str(body: dict[str, Any], key: str, max_len: int) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise InvalidRequest(f"{key} must be a string of at most {max_len} characters")
    return value


def check_ip(value: str, field: str = "client_ip") -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise InvalidRequest(f"{field} is not an IP address") from None


async def read_json_object(request: web.Request, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The body as a JSON object (an empty body is ``{}``) whose strings Postgres can store; 400 otherwise.

    Every JSON-bodied handler reads through here, so each gets the read timeout, the size cap and the
    deep-nesting guard."""
    raw = await read_small_body(request, max_bytes, request.app[keys.SETTINGS].http.body_read_timeout_s)
    if raw is None:
        raise InvalidRequest("request body too large")
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurdly deep nesting
        raise InvalidRequest("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object")
    check_storable(body)
    return body


async def parse_upload_request(request: web.Request, max_upload_bytes: int) -> UploadRequest:
    body = await read_json_object(request)
    size = body.get("size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidRequest("size must be a non-negative integer")
        if size > max_upload_bytes:
            raise PayloadTooLarge(f"size {size} is over the {max_upload_bytes}-byte limit")
    visibility = body.get("visibility", "public")
    if visibility not in ("public", "private"):
        raise InvalidRequest("visibility must be `public` or `private`")
    tags = body.get("tags", [])
    if (
        not isinstance(tags, list)
        or len(tags) > MAX_TAGS
        or not all(isinstance(t, str) and 0 < len(t) <= 64 for t in tags)
    ):
        raise InvalidRequest(f"tags must be a list of at most {MAX_TAGS} strings of 1-64 characters")
    metadata = body.get("metadata", {})
    if not isinstance(metadata, dict) or len(json.dumps(metadata)) > MAX_METADATA_BYTES:
        raise InvalidRequest(f"metadata must be a JSON object of at most {MAX_METADATA_BYTES} bytes")
    callback_url = _opt_str(body, "callback_url", 2048)
    if callback_url is not None and (
        urlsplit(callback_url).scheme not in ("http", "https") or not urlsplit(callback_url).hostname
    ):
        raise InvalidRequest("callback_url must be an http(s) URL")
    client_ip = _opt_str(body, "client_ip", 64)
    _opt_str(body, "content_type", 255)  # informative only: the node decides the type from the bytes
    return UploadRequest(
        filename=_opt_str(body, "filename", 255),
        size=size,
        visibility=visibility,
        tags=tuple(tags),
        metadata=metadata,
        callback_url=callback_url,
        client_ip=check_ip(client_ip) if client_ip else None,
    )


@dataclass(frozen=True)
class UrlQuery:
    w: float | None
    h: float | None
    dpr: float
    fit: str
    fmt: str
    client_ip: str | None
    variant: str | None = None  # "original" (owner only, signed), else the variant picked for the box
    default: str | None = None  # an image of the same app to give if this one is missing (common.fallback)


def _opt_number(query: Any, key: str, lo: float, hi: float) -> float | None:
    value = query.get(key)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise InvalidRequest(f"{key} must be a number") from None
    if not lo <= number <= hi:
        raise InvalidRequest(f"{key} must be within {lo:g}..{hi:g}")
    return number


def parse_url_query(request: web.Request) -> UrlQuery:
    return parse_url_params(request.query)


def parse_url_params(q: Mapping[str, str]) -> UrlQuery:
    """A URL lookup's query parameters (400 for a bad one)."""
    fit = q.get("fit", "inside")
    if fit not in ("inside", "cover"):
        raise InvalidRequest("fit must be `inside` or `cover`")
    fmt = q.get("fmt", "auto")
    if fmt not in ("auto", "jpeg", "jpg", "webp", "avif", "png"):
        raise InvalidRequest("fmt must be one of auto, jpeg, webp, avif, png")
    client_ip = q.get("client_ip")
    variant = q.get("variant")
    if variant not in (None, "original"):
        raise InvalidRequest("variant must be `original` (other variants are picked from w/h/dpr/fmt)")
    default = q.get("default")
    if default is not None and not is_image_id(default):
        raise InvalidRequest("default must be an image id")
    return UrlQuery(
        w=_opt_number(q, "w", 1, 16384),
        h=_opt_number(q, "h", 1, 16384),
        dpr=_opt_number(q, "dpr", 0.5, 5) or 1.0,
        fit=fit,
        fmt=fmt,
        client_ip=check_ip(client_ip) if client_ip else None,
        variant=variant,
        default=default,
    )


def remote_address(request: web.Request) -> str | None:
    """The client's address: the TCP peer, or what a trusted proxy says it forwarded for."""
    return client_address(request.remote, request.headers, request.app[keys.PROXIES])
