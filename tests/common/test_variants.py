from __future__ import annotations

import pytest

from common.errors import InvalidRequest, NotFound, SizeNotAllowed
from common.variants import (
    VariantSpec,
    check_size,
    negotiate,
    parse_variant,
    pick_format,
    pick_variant,
    pick_width,
    resolve_format,
)

WIDTHS = (150, 300, 600, 1200, 2400)


@pytest.mark.parametrize(
    ("w", "h", "dpr", "img", "expected"),
    [
        (500, None, 1, (None, None), 600),
        (600, None, 1, (None, None), 600),
        (601, None, 1, (None, None), 1200),
        (250, None, 2, (None, None), 600),
        (100, None, 1.5, (None, None), 150),
        (5000, None, 1, (None, None), 2400),  # none covers it: the largest
        (None, None, 1, (None, None), 2400),
        (None, 300, 1, (4000, 3000), 600),  # height-only box through the aspect ratio: 400 px wide
        (1000, 100, 1, (4000, 3000), 150),  # the tighter of the two bounds
    ],
)
def test_pick_width(
    w: float | None, h: float | None, dpr: float, img: tuple[int | None, int | None], expected: int
) -> None:
    assert pick_width(WIDTHS, w, h, dpr, *img) == expected


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("w600.webp", VariantSpec("w", 600, "webp")),
        ("300x200.jpg", VariantSpec("cover", 300, "jpg", 200)),
        ("fit300x300.avif", VariantSpec("fit", 300, "avif", 300)),
        ("thumb.png", VariantSpec("thumb", 0, "png")),
        ("w150.auto", VariantSpec("w", 150, "auto")),
    ],
)
def test_parse_variant_round_trips(name: str, spec: VariantSpec) -> None:
    assert parse_variant(name) == spec
    assert spec.name == name


def test_parse_variant_refuses_the_rest() -> None:
    for bad in (
        "w0.jpg",
        "w600.gif",
        "600.jpg",
        "w600",
        "../w600.jpg",
        "w600.jpg/x",
        "w1234567.jpg",
        "thumb",
        "fit300.jpg",
        "0x10.jpg",
        "thumb.bmp",
        "original.jpg",
        "W600.jpg",
    ):
        with pytest.raises(NotFound):
            parse_variant(bad)
    assert parse_variant("w600.webp").content_type == "image/webp"


def test_check_size() -> None:
    check_size(parse_variant("300x150.jpg"), WIDTHS, 8192)
    check_size(parse_variant("thumb.jpg"), WIDTHS, 8192)
    for name in ("w700.jpg", "300x200.jpg", "fit301x300.png"):
        with pytest.raises(SizeNotAllowed):
            check_size(parse_variant(name), WIDTHS, 8192)
        check_size(parse_variant(name), WIDTHS, 8192, signed=True)
    with pytest.raises(SizeNotAllowed):
        check_size(parse_variant("w9000.jpg"), WIDTHS, 8192, signed=True)


@pytest.mark.parametrize(
    ("accept", "fmt"),
    [
        ("image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8", "avif"),  # Chrome
        ("image/webp,*/*", "webp"),
        ("image/avif;q=0,image/webp", "webp"),  # refused explicitly
        ("image/*,*/*;q=0.8", "jpg"),  # wildcards do not promise AVIF/WebP
        ("", "jpg"),
        (None, "jpg"),
        ("IMAGE/AVIF", "avif"),
    ],
)
def test_negotiate(accept: str | None, fmt: str) -> None:
    assert negotiate(accept) == fmt


def test_resolve_format_marks_vary() -> None:
    assert resolve_format(parse_variant("w150.auto"), "image/webp") == (parse_variant("w150.webp"), True)
    assert resolve_format(parse_variant("w150.png"), "image/webp") == (parse_variant("w150.png"), False)


def test_pick_format() -> None:
    assert pick_format("webp") == "webp"
    assert pick_format("jpeg") == "jpg"
    assert pick_format("auto") == "auto"  # the node negotiates (Vary: Accept)
    assert pick_format("auto", "application/json") == "auto"
    assert pick_format("auto", "image/avif,image/webp,*/*") == "avif"  # a browser following /img
    assert pick_format("auto", "image/png,image/*") == "jpg"
    with pytest.raises(InvalidRequest):
        pick_format("bmp")


def test_pick_variant() -> None:
    def pick(**kw: object) -> str:
        args: dict[str, object] = {
            "w": None,
            "h": None,
            "dpr": 1.0,
            "fit": "inside",
            "fmt": "auto",
            "accept": None,
            "image_w": 4000,
            "image_h": 3000,
        }
        args.update(kw)
        return pick_variant(WIDTHS, **args)  # type: ignore[arg-type]

    assert pick(w=500) == "w600.auto"
    assert pick(w=300, dpr=2, fmt="webp") == "w600.webp"
    assert pick(w=300, h=200, fit="cover", fmt="jpeg") == "300x300.jpg"  # each side from the configured sizes
    assert pick(w=300, h=200, fit="cover", dpr=2) == "600x600.auto"
    assert pick(w=300, fit="cover") == "w300.auto"  # cover needs both sides
    assert pick(w=2000, image_w=640, image_h=480) == "w1200.auto"  # never more than the image has
    assert pick(h=100, accept="image/webp") == "w150.webp"
