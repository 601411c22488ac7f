"""`GET /v1/images` query parameters -> an ImageFilter (pure: no I/O); `400 invalid_request` naming the
parameter for anything malformed, unknown or out of range.

Lists (`tags`, `any_tags`, `format`, `status`) are comma-separated and may also be repeated; every other
parameter may appear once. `meta.<key>=<value>` matches a top-level metadata key whose value is that
string, or that number / boolean / null when the text spells one (so `meta.user=42` finds `{"user": 42}`
and `{"user": "42"}`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from multidict import MultiMapping

from common.db.search import MAX_LIMIT, ImageFilter
from common.errors import Forbidden, InvalidRequest
from query_service import search_cursor
from query_service.requests import check_storable

DEFAULT_LIMIT = 100
MAX_TAGS = 20
MAX_TAG_CHARS = 64
MAX_META = 10
MAX_META_KEY_CHARS = 64
MAX_META_VALUE_CHARS = 256
MAX_DIMENSION = 2**31 - 1  # Postgres `integer`
FORMATS = ("jpeg", "png", "gif", "webp", "avif", "heic", "tiff", "bmp", "ico")  # as sniffed at upload
FORMAT_ALIASES = {"jpg": "jpeg", "heif": "heic"}
STATUSES = ("requested", "uploaded", "processing", "ready", "rejected", "quarantined", "deleted", "expired")
VISIBILITIES = ("public", "private")
ORDERS = ("newest", "oldest")
META_PREFIX = "meta."
KNOWN = (
    "any_tags",
    "app_id",
    "created_after",
    "created_before",
    "cursor",
    "format",
    "limit",
    "max_height",
    "max_width",
    "min_height",
    "min_width",
    "order",
    "ready_after",
    "ready_before",
    "status",
    "tags",
    "visibility",
)
Bound = TypeVar("Bound", int, datetime)
_APP_ID_RE = re.compile(r"^[0-9a-f]{8}$")
# A `+` in a query string decodes to a space: "2026-01-31T12:00:00 01:00" meant "+01:00".
_SPACED_OFFSET_RE = re.compile(r"^(.*\d) (\d\d(?::?\d\d)?)$")


def _single(query: MultiMapping[str], name: str) -> str | None:
    values = query.getall(name, [])
    if len(values) > 1:
        raise InvalidRequest(f"{name} may be given only once")
    return values[0] if values else None


def _list(query: MultiMapping[str], name: str, max_items: int = MAX_TAGS) -> tuple[str, ...]:
    items: list[str] = []
    for value in query.getall(name, []):
        items.extend(part.strip() for part in value.split(","))
    if any(not item for item in items):
        raise InvalidRequest(f"{name} must be a comma-separated list of non-empty values")
    if len(items) > max_items:
        raise InvalidRequest(f"{name} takes at most {max_items} values")
    return tuple(dict.fromkeys(items))  # de-duplicated, order kept


def _enum(query: MultiMapping[str], name: str, allowed: tuple[str, ...], aliases: dict[str, str]) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(aliases.get(v.lower(), v.lower()) for v in _list(query, name)))
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise InvalidRequest(f"{name} must be among {', '.join(allowed)} (got {unknown[0]!r})")
    return values


def _int(query: MultiMapping[str], name: str, lo: int, hi: int) -> int | None:
    text = _single(query, name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be within {lo}..{hi}")
    return value


def parse_time(name: str, text: str) -> datetime:
    """ISO 8601 (`2026-01-31`, `2026-01-31T12:00:00Z`, `...+01:00`); a time without an offset is UTC."""
    candidates = [text]
    spaced = _SPACED_OFFSET_RE.match(text)
    if spaced:
        candidates.append(f"{spaced[1]}+{spaced[2]}")
    for candidate in candidates:
        try:
            value = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    raise InvalidRequest(f"{name} must be an ISO 8601 time, e.g. 2026-01-31T12:00:00Z")


def _time(query: MultiMapping[str], name: str) -> datetime | None:
    text = _single(query, name)
    return None if text is None else parse_time(name, text)


def meta_values(text: str) -> tuple[Any, ...]:
    """The JSON values a query-string value stands for: the string itself, and the scalar it spells."""
    values: list[Any] = [text]
    try:
        scalar = json.loads(text)
    except ValueError:
        return tuple(values)
    if scalar is None or isinstance(scalar, bool) or (isinstance(scalar, int | float) and math.isfinite(scalar)):
        values.append(scalar)
    return tuple(values)


def _metadata(query: MultiMapping[str]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    out: dict[str, tuple[Any, ...]] = {}
    for name, value in query.items():
        if not name.startswith(META_PREFIX):
            continue
        key = name[len(META_PREFIX) :]
        if not key or len(key) > MAX_META_KEY_CHARS:
            raise InvalidRequest(f"{name}: a metadata key must be 1-{MAX_META_KEY_CHARS} characters")
        if key in out:
            raise InvalidRequest(f"{name} may be given only once")
        if len(value) > MAX_META_VALUE_CHARS:
            raise InvalidRequest(f"{name}: the value must be at most {MAX_META_VALUE_CHARS} characters")
        out[key] = meta_values(value)
    if len(out) > MAX_META:
        raise InvalidRequest(f"at most {MAX_META} meta.<key> filters")
    return tuple(out.items())


def _check_range(lo: Bound | None, hi: Bound | None, lo_name: str, hi_name: str) -> None:
    if lo is not None and hi is not None and lo > hi:
        raise InvalidRequest(f"{lo_name} must not be after {hi_name}")


def parse_search(
    query: MultiMapping[str],
    *,
    own_app_id: str,
    is_admin: bool,
    key_for: Callable[[str], bytes | None],
) -> ImageFilter:
    """The filter for this caller: an app key sees its app's images, an admin key every app's (or one
    app's with `app_id`)."""
    for name in query:
        if name not in KNOWN and not name.startswith(META_PREFIX):
            raise InvalidRequest(f"unknown parameter {name!r}")
        for value in query.getall(name):
            try:
                check_storable(value)
            except InvalidRequest as exc:
                raise InvalidRequest(f"{name}: {exc.message}") from None
    app_id = _single(query, "app_id")
    if app_id is not None and not _APP_ID_RE.match(app_id):
        raise InvalidRequest("app_id must be 8 hex digits")
    if app_id is not None and not is_admin and app_id != own_app_id:
        raise Forbidden("an app key lists only its own app's images")
    scope: str | None = app_id if app_id is not None else (None if is_admin else own_app_id)
    tags_all, tags_any = _list(query, "tags"), _list(query, "any_tags")
    for name, tags in (("tags", tags_all), ("any_tags", tags_any)):
        if any(len(t) > MAX_TAG_CHARS for t in tags):
            raise InvalidRequest(f"{name}: each tag is 1-{MAX_TAG_CHARS} characters")
    visibility = _enum(query, "visibility", VISIBILITIES, {})
    if len(visibility) > 1:
        raise InvalidRequest("visibility takes one value, public or private")
    order = _single(query, "order")
    if order is not None and order not in ORDERS:
        raise InvalidRequest("order must be newest or oldest")
    limit = _int(query, "limit", 1, MAX_LIMIT)
    f = ImageFilter(
        app_id=scope,
        tags_all=tags_all,
        tags_any=tags_any,
        formats=_enum(query, "format", FORMATS, FORMAT_ALIASES),
        statuses=_enum(query, "status", STATUSES, {}),
        visibility=visibility[0] if visibility else None,
        min_width=_int(query, "min_width", 0, MAX_DIMENSION),
        max_width=_int(query, "max_width", 0, MAX_DIMENSION),
        min_height=_int(query, "min_height", 0, MAX_DIMENSION),
        max_height=_int(query, "max_height", 0, MAX_DIMENSION),
        created_after=_time(query, "created_after"),
        created_before=_time(query, "created_before"),
        ready_after=_time(query, "ready_after"),
        ready_before=_time(query, "ready_before"),
        metadata=_metadata(query),
        newest_first=order != "oldest",
        limit=DEFAULT_LIMIT if limit is None else limit,
    )
    _check_range(f.min_width, f.max_width, "min_width", "max_width")
    _check_range(f.min_height, f.max_height, "min_height", "max_height")
    _check_range(f.created_after, f.created_before, "created_after", "created_before")
    _check_range(f.ready_after, f.ready_before, "ready_after", "ready_before")
    cursor = _single(query, "cursor")
    if cursor is not None:
        position, newest_first = search_cursor.decode(cursor, key_for)
        if order is not None and newest_first != f.newest_first:
            raise InvalidRequest("cursor belongs to the other order")
        f = replace(f, after=position, newest_first=newest_first)
    return f
