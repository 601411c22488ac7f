"""SQL of the image search (`GET /v1/images`): one app's images (or every app's), filtered, newest or oldest
first, keyset-paginated on (created_at, image_id).

The query is assembled from fixed fragments, one per filter given, with every value a parameter. Each
fragment is one an index of migration 007 serves (see that file); `build` is public so the scale test can
EXPLAIN exactly what the service runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString

from psycopg.types.json import Jsonb

from common.db.images import IMAGE_SELECT, ImageRow
from common.db.rows import Pool, fetch_all

MAX_LIMIT = 1000


@dataclass(frozen=True)
class Position:
    """Where a page ended: the (created_at, image_id) of its last image; the next page starts after it."""

    created_at: datetime
    image_id: str


@dataclass(frozen=True)
class ImageFilter:
    """What to list. Empty tuples and None mean "no condition"."""

    app_id: str | None  # None: every app's images (admin keys)
    tags_all: tuple[str, ...] = ()
    tags_any: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()  # empty: every status but `deleted` (tombstones are listed only when asked)
    visibility: str | None = None
    min_width: int | None = None
    max_width: int | None = None
    min_height: int | None = None
    max_height: int | None = None
    created_after: datetime | None = None  # inclusive
    created_before: datetime | None = None  # exclusive
    ready_after: datetime | None = None  # inclusive
    ready_before: datetime | None = None  # exclusive
    # Metadata key -> the JSON values that match it (a query string value may stand for a string or a number).
    metadata: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    newest_first: bool = True
    after: Position | None = None
    limit: int = 100


@dataclass(frozen=True)
class Page:
    images: list[ImageRow]
    next: Position | None  # None: this was the last page


def _one_of(column: LiteralString, values: tuple[str, ...], where: list[LiteralString], params: list[Any]) -> None:
    # One value as `=`, so the ordered (app_id, column, created_at, image_id) index returns rows in order;
    # `= ANY` over a btree column does not keep the order before Postgres 17.
    if len(values) == 1:
        where.append(column + " = %s")
        params.append(values[0])
    elif values:
        where.append(column + " = ANY(%s)")
        params.append(list(values))


def build(f: ImageFilter) -> tuple[LiteralString, list[Any]]:
    """The SELECT (up to ``f.limit + 1`` rows, so the caller knows whether a next page exists) and its params."""
    where: list[LiteralString] = []
    params: list[Any] = []
    if f.app_id is not None:
        where.append("i.app_id = %s")
        params.append(f.app_id)
    if f.statuses:
        _one_of("i.status", f.statuses, where, params)
    else:
        where.append("i.status <> 'deleted'")
    _one_of("i.format", f.formats, where, params)
    if f.visibility is not None:
        _one_of("i.visibility", (f.visibility,), where, params)
    if f.tags_all:
        where.append("i.tags @> %s::text[]")
        params.append(list(f.tags_all))
    if f.tags_any:
        where.append("i.tags && %s::text[]")
        params.append(list(f.tags_any))
    ranges: tuple[tuple[LiteralString, object], ...] = (
        ("i.width >= %s", f.min_width),
        ("i.width <= %s", f.max_width),
        ("i.height >= %s", f.min_height),
        ("i.height <= %s", f.max_height),
        ("i.created_at >= %s", f.created_after),
        ("i.created_at < %s", f.created_before),
        ("i.ready_at >= %s", f.ready_after),
        ("i.ready_at < %s", f.ready_before),
    )
    for fragment, value in ranges:
        if value is not None:
            where.append(fragment)
            params.append(value)
    for key, values in f.metadata:
        # Containment of {key: value} is what the jsonb_path_ops index answers; alternatives are OR-ed.
        where.append("(" + " OR ".join(["i.metadata @> %s"] * len(values)) + ")")
        params.extend(Jsonb({key: value}) for value in values)
    if f.after is not None:
        # A row comparison is one index range on (…, created_at, image_id): the seek to the cursor.
        where.append(
            "(i.created_at, i.image_id) < (%s, %s)" if f.newest_first else "(i.created_at, i.image_id) > (%s, %s)"
        )
        params.extend((f.after.created_at, f.after.image_id))
    order: LiteralString = "i.created_at DESC, i.image_id DESC" if f.newest_first else "i.created_at, i.image_id"
    conditions: LiteralString = " AND ".join(where) if where else "true"
    params.append(f.limit + 1)
    return IMAGE_SELECT + " WHERE " + conditions + " ORDER BY " + order + " LIMIT %s", params


async def search_images(pool: Pool, f: ImageFilter) -> Page:
    """One page of images and the position the next page starts after."""
    if not 1 <= f.limit <= MAX_LIMIT:
        raise ValueError(f"limit must be within 1..{MAX_LIMIT}")
    query, params = build(f)
    # Planned for these values every time: how selective a tag, a format or a width range is decides between
    # walking the ordered index and a bitmap of matches, and one generic plan for all values (what a prepared
    # statement settles on) gets that wrong for some of them. Planning costs well under a millisecond.
    rows = await fetch_all(pool, ImageRow, query, params, prepare=False)
    if len(rows) <= f.limit:
        return Page(rows, None)
    rows = rows[: f.limit]
    last = rows[-1]
    return Page(rows, Position(last["created_at"], last["image_id"]))
