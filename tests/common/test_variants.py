from __future__ import annotations

import pytest

from common.errors import InvalidRequest, NotFound
from common.variants import parse_variant, pick_format, pick_width

WIDTHS = (150, 300, 600, 1200, 2400)


@pytest.mark.parametrize(("w", "h", "dpr", "img", "expected"), [
    (500, None, 1, (None, None), 600),
    (600, None, 1, (None, None), 600),
    (601, None, 1, (None, None), 1200),
    (250, None, 2, (None, None), 600),
    (100, None, 1.5, (None, None), 150),
    (5000, None, 1, (None, None), 2400),  # none covers it: the largest
    (None, None, 1, (None, None), 2400),
    (None, 300, 1, (4000, 3000), 600),  # height-only box through the aspect ratio: 400 px wide
    (1000, 100, 1, (4000, 3000), 150),  # the tighter of the two bounds
])
def test_pick_width(w: float | None, h: float | None, dpr: float, img: tuple[int | None, int | None],
                    expected: int) -> None:
    assert pick_width(WIDTHS, w, h, dpr, *img) == expected


def test_parse_variant() -> None:
    spec = parse_variant("w600.webp")
    assert (spec.width, spec.fmt, spec.name, spec.content_type) == (600, "webp", "w600.webp", "image/webp")
    for bad in ("w0.jpg", "w600.gif", "600.jpg", "w600", "../w600.jpg", "w600.jpg/x", "w1234567.jpg"):
        with pytest.raises(NotFound):
            parse_variant(bad)


def test_pick_format() -> None:
    assert pick_format("webp") == "webp"
    assert pick_format("auto") == pick_format("jpeg") == "jpg"
    with pytest.raises(InvalidRequest):
        pick_format("bmp")
