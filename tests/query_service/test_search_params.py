"""The pure parts of search and srcset: query parameters, the cursor, and the choice of srcset entries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from multidict import MultiDict

from common.db.search import ImageFilter, Position, build
from common.errors import Forbidden, InvalidRequest
from query_service import search_cursor
from query_service.search_params import meta_values, parse_search, parse_time
from query_service.srcset import SrcsetQuery, parse_srcset_query, plan

KEYS = {"k1": b"secret-one", "k2": b"secret-two"}
LADDER = (150, 300, 600, 1200, 2400)


def parse(pairs: list[tuple[str, str]], *, admin: bool = False) -> ImageFilter:
    return parse_search(MultiDict(pairs), own_app_id="0000000a", is_admin=admin, key_for=KEYS.get)


def test_cursor_round_trip_is_exact_and_tamper_evident() -> None:
    at = datetime(2026, 3, 1, 12, 0, 0, 123457, tzinfo=UTC)
    cursor = search_cursor.encode(Position(at, "abc"), False, "k1", KEYS["k1"])
    position, newest_first = search_cursor.decode(cursor, KEYS.get)
    assert position == Position(at, "abc") and position.created_at.microsecond == 123457 and not newest_first
    payload, mac = cursor.split(".")
    for bad in (payload + "." + mac[:-1] + ("A" if mac[-1] != "A" else "B"), payload[1:] + "." + mac, "x", ""):
        with pytest.raises(InvalidRequest):
            search_cursor.decode(bad, KEYS.get)
    with pytest.raises(InvalidRequest):  # a retired (unknown) key id
        search_cursor.decode(cursor, {"k2": KEYS["k2"]}.get)


def test_filters_parse_and_scope() -> None:
    f = parse(
        [
            ("tags", "a, b"),
            ("tags", "b"),
            ("any_tags", "c"),
            ("format", "JPG,png"),
            ("min_width", "10"),
            ("created_after", "2026-01-31"),
            ("ready_before", "2026-01-31T12:00:00 01:00"),  # a `+` that arrived as a space
            ("meta.user", "42"),
            ("order", "oldest"),
            ("limit", "5"),
        ]
    )
    assert f.app_id == "0000000a" and f.tags_all == ("a", "b") and f.tags_any == ("c",)
    assert f.formats == ("jpeg", "png") and f.min_width == 10 and f.limit == 5 and not f.newest_first
    assert f.created_after == datetime(2026, 1, 31, tzinfo=UTC)
    assert f.ready_before == datetime(2026, 1, 31, 12, tzinfo=timezone(timedelta(hours=1)))
    assert f.metadata == (("user", ("42", 42)),) and f.statuses == ()
    assert parse([], admin=True).app_id is None
    assert parse([("app_id", "0000000b")], admin=True).app_id == "0000000b"
    with pytest.raises(Forbidden):
        parse([("app_id", "0000000b")])
    cursor = search_cursor.encode(Position(datetime(2026, 1, 1, tzinfo=UTC), "x"), True, "k1", KEYS["k1"])
    assert parse([("cursor", cursor)]).after == Position(datetime(2026, 1, 1, tzinfo=UTC), "x")
    with pytest.raises(InvalidRequest, match="cursor"):
        parse([("cursor", cursor), ("order", "oldest")])


def test_time_and_meta_values() -> None:
    assert parse_time("t", "2026-01-31T12:00:00Z") == datetime(2026, 1, 31, 12, tzinfo=UTC)
    with pytest.raises(InvalidRequest, match="t must be"):
        parse_time("t", "next tuesday")
    assert (
        meta_values("x") == ("x",) and meta_values("true") == ("true", True) and meta_values("null") == ("null", None)
    )
    assert meta_values("1.5") == ("1.5", 1.5) and meta_values("NaN") == ("NaN",) and meta_values("[1]") == ("[1]",)


def test_sql_uses_one_fragment_per_filter_and_values_as_parameters() -> None:
    query, params = build(ImageFilter("app", formats=("png",), metadata=(("k", ("1", 1)),), limit=10))
    assert "i.format = %s" in query and "ANY" not in query and "i.status <> 'deleted'" in query
    assert "(i.metadata @> %s OR i.metadata @> %s)" in query and query.endswith("DESC LIMIT %s")
    assert params[0] == "app" and params[1] == "png" and params[-1] == 11
    query, _params = build(ImageFilter(None, formats=("png", "gif"), after=Position(datetime.now(UTC), "i")))
    assert (
        "i.app_id" not in query and "i.format = ANY(%s)" in query and "(i.created_at, i.image_id) < (%s, %s)" in query
    )


def test_srcset_entries_are_real_widths() -> None:
    def widths(asked: tuple[int, ...], image_w: int) -> list[tuple[int, str]]:
        q = SrcsetQuery(asked, "webp", "inside", None)
        return [(e.width, e.variant) for e in plan(q, LADDER, image_w, image_w, None)]

    assert widths(LADDER, 1600) == [(150, "w150.webp"), (300, "w300.webp"), (600, "w600.webp"), (1200, "w1200.webp")]
    assert widths((320, 640, 1280, 2000), 1600) == [(600, "w600.webp"), (1200, "w1200.webp"), (1600, "w2400.webp")]
    assert widths((400, 500), 1600) == [(600, "w600.webp")]
    assert widths((300, 600), 100) == [(100, "w150.webp")]  # narrower than every width: the image itself
    assert parse_srcset_query({"widths": "640,320,640"}, LADDER).widths == (320, 640)
    assert parse_srcset_query({}, (300,)).widths == (300,)
    for bad in ({"widths": "1,x"}, {"widths": "0"}, {"fmt": "gif"}, {"fit": "fill"}, {"client_ip": "nope"}):
        with pytest.raises(InvalidRequest):
            parse_srcset_query(bad, LADDER)
