"""Every variant kind and format from real photos: dimensions, the bytes' real format, no metadata left,
upright orientation, sRGB, alpha, animation, never upscaling."""

from __future__ import annotations

from pathlib import Path

import pytest
import pyvips

from common.variants import parse_variant
from storage_node.render import RenderOptions, build_variant, build_variants

OPTS = RenderOptions()
MAGIC = {"jpg": b"\xff\xd8\xff", "png": b"\x89PNG", "webp": b"RIFF", "avif": b"ftypavif"}


def render(src: Path, name: str, tmp_path: Path, animated: bool = False) -> tuple[pyvips.Image, bytes]:
    dest = tmp_path / name
    build_variant(src, parse_variant(name), dest, OPTS, animated)
    data = dest.read_bytes()
    fmt = name.rsplit(".", 1)[1]
    assert MAGIC[fmt] in data[:16], f"{name} is not {fmt}"
    options = {"n": -1} if fmt in ("webp", "avif") else {}
    return pyvips.Image.new_from_buffer(data, "", **options), data


def assert_no_metadata(image: pyvips.Image, data: bytes) -> None:
    fields = image.get_fields()
    assert not [f for f in fields if f.startswith(("exif-", "xmp-", "iptc-"))], fields
    assert b"Exif\x00\x00" not in data and b"GPS" not in data and b"minicdn-test" not in data


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("w600.jpg", (600, 450)),
        ("w600.webp", (600, 450)),
        ("w300.avif", (300, 225)),
        ("w300.png", (300, 225)),
        ("300x150.jpg", (300, 150)),
        ("150x300.webp", (150, 300)),
        ("fit300x300.jpg", (300, 225)),
        ("fit600x150.png", (200, 150)),
        ("thumb.jpg", (150, 150)),
        ("thumb.webp", (150, 150)),
        ("w4000.jpg", (2048, 1536)),  # never upscaled
    ],
)
def test_kinds_and_formats_from_a_rotated_photo(
    testdata: Path, tmp_path: Path, name: str, size: tuple[int, int]
) -> None:
    image, data = render(testdata / "astronaut_rot8_gps.jpg", name, tmp_path)
    assert (image.width, image.height) == size
    assert image.interpretation == "srgb" and image.bands == 3
    assert_no_metadata(image, data)


def test_orientation_matches_an_upright_reference(testdata: Path, tmp_path: Path) -> None:
    """Stored 1536x2048 with Orientation=8: the variant is 2048x1536 with the pixels of the upright image."""
    out, _ = render(testdata / "astronaut_rot8_gps.jpg", "w2400.png", tmp_path)
    assert (out.width, out.height) == (2048, 1536)
    raw = pyvips.Image.new_from_file(str(testdata / "astronaut_rot8_gps.jpg"), autorotate=False)
    assert (raw.width, raw.height) == (1536, 2048)
    upright = raw.rot270()  # Orientation 8 = the camera was turned 90 degrees clockwise
    wrong = raw.rot90()

    def diff(a: pyvips.Image, b: pyvips.Image) -> float:
        a, b = a.resize(0.1), b.resize(0.1)
        return float((a.cast("float") - b.cast("float")).abs().avg())

    assert diff(out, upright) < 3 < 20 < diff(out, wrong)


def test_alpha_kept_or_flattened_on_white(tmp_path: Path) -> None:
    # A transparent square with an opaque red disc.
    disc = pyvips.Image.black(200, 200).draw_circle(255, 100, 100, 50, fill=True)
    rgba = pyvips.Image.black(200, 200).new_from_image([255, 0, 0]).bandjoin(disc).copy(interpretation="srgb")
    src = tmp_path / "alpha.png"
    rgba.pngsave(str(src))
    for fmt in ("png", "webp", "avif"):
        image, _ = render(src, f"w150.{fmt}", tmp_path)
        assert image.bands == 4 and image.hasalpha(), fmt
        assert image.getpoint(2, 2)[3] == 0
    jpg, _ = render(src, "w150.jpg", tmp_path)
    assert jpg.bands == 3
    assert all(v > 245 for v in jpg.getpoint(2, 2))  # the transparent corner is white, not black
    assert jpg.getpoint(75, 75)[0] > 200 and jpg.getpoint(75, 75)[1] < 60


def test_cmyk_and_16_bit_sources_become_8_bit_srgb(tmp_path: Path) -> None:
    rgb = pyvips.Image.black(64, 48).new_from_image([30, 120, 220]).copy(interpretation="srgb")
    cmyk = tmp_path / "cmyk.jpg"
    rgb.colourspace("cmyk").jpegsave(str(cmyk))
    assert pyvips.Image.new_from_file(str(cmyk)).interpretation == "cmyk"
    wide = tmp_path / "rgb16.png"
    rgb.colourspace("rgb16").pngsave(str(wide))
    for src in (cmyk, wide):
        image, _ = render(src, "w150.jpg", tmp_path)
        assert image.interpretation == "srgb" and image.format == "uchar" and image.bands == 3
        r, g, b = image.getpoint(10, 10)
        assert b > g > r, (src.name, r, g, b)  # still blue-ish: colours converted, not reinterpreted


def test_animation_kept_where_the_format_can_animate(testdata: Path, tmp_path: Path) -> None:
    src = testdata / "anim_tiny.gif"
    frames = pyvips.Image.new_from_file(str(src)).get("n-pages")
    assert frames > 1
    for name in ("w150.webp", "w150.avif", "thumb.webp"):
        image, _ = render(src, name, tmp_path, animated=True)
        assert image.get("n-pages") == frames, name
    still, _ = render(src, "w150.jpg", tmp_path, animated=True)
    assert "n-pages" not in still.get_fields() or still.get("n-pages") == 1
    assert (still.width, still.height) == (14, 25)  # the first frame, not the whole strip; never upscaled
    square, _ = render(src, "thumb.png", tmp_path, animated=True)
    assert square.width == square.height == 14


def test_embedded_icc_profile_is_honoured(tmp_path: Path) -> None:
    """A Display P3 photo (profile embedded) comes out as the same colours in sRGB, with no profile left."""
    srgb = pyvips.Image.black(64, 48).new_from_image([30, 120, 220]).copy(interpretation="srgb")
    p3 = srgb.icc_transform("p3", input_profile="srgb")
    src = tmp_path / "p3.png"
    p3.pngsave(str(src))
    stored = pyvips.Image.new_from_file(str(src))
    assert "icc-profile-data" in stored.get_fields()
    assert abs(stored.getpoint(5, 5)[0] - 30) > 8  # the raw P3 numbers are not the sRGB ones
    image, data = render(src, "w150.png", tmp_path)
    assert "icc-profile-data" not in image.get_fields()
    assert all(abs(a - b) <= 4 for a, b in zip(image.getpoint(5, 5), (30, 120, 220), strict=True))


def test_variants_differing_by_format_share_their_pixels_and_a_square_thumb_is_the_whole_image(
    tmp_path: Path,
) -> None:
    """``build_variants``: thumb.jpg and thumb.webp from one decode and crop are the same picture (as built one by
    one); a square source's thumb keeps every pixel (no crop to search for), a wide one is cropped to a square."""
    square = tmp_path / "square.png"
    # Left half black, right half white: a crop of a square would move the edge off the centre.
    white = (pyvips.Image.black(200, 400) + 255).cast("uchar")
    pyvips.Image.black(400, 400).insert(white, 200, 0).copy(interpretation="b-w").pngsave(str(square))
    wanted = [(parse_variant("thumb.jpg"), tmp_path / "t.jpg"), (parse_variant("thumb.webp"), tmp_path / "t.webp")]
    build_variants(square, wanted, OPTS)
    jpg, webp = (pyvips.Image.new_from_file(str(p)) for _s, p in wanted)
    assert (jpg.width, jpg.height) == (webp.width, webp.height) == (150, 150)
    assert abs(jpg.crop(0, 0, 70, 150).avg()) < 8 and jpg.crop(80, 0, 70, 150).avg() > 247  # the edge stays central
    assert abs(jpg.avg() - webp.avg()) < 2  # one picture, two encodings
    alone, _ = render(square, "thumb.webp", tmp_path)
    assert abs(alone.avg() - webp.avg()) < 0.5
    wide = tmp_path / "wide.png"
    pyvips.Image.black(600, 300).pngsave(str(wide))
    image, _ = render(wide, "thumb.jpg", tmp_path)
    assert (image.width, image.height) == (150, 150)
