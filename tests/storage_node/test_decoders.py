"""Decoders beside libvips (storage_node.decoders): HEIC through pillow-heif (primary image, rotation boxes,
ICC), BMP, ICO and animated PNG through Pillow; their limits checked on the header, their sources rendered
like libvips's own."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pyvips
from PIL import Image

from common.errors import InvalidImage, UnsupportedImage
from common.variants import ORIGINAL_RENDITION, parse_stored_variant, parse_variant
from storage_node.decoders import decode, open_source, probe_foreign
from storage_node.render import RenderOptions, build_variant
from storage_node.validate import apng_frames, probe
from tests import hostile

HEIC = "iphone_rot6_p3.heic"


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def pillow_bytes(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def upright_error(image: pyvips.Image, testdata: Path) -> float:
    ref = pyvips.Image.thumbnail(str(testdata / "chelsea_gps.jpg"), image.width, height=image.height, size="force")
    return float((image.extract_band(0, n=3) - ref).abs().avg())


def test_heic_primary_image_upright_with_its_profile(testdata: Path) -> None:
    image = decode(testdata / HEIC, "heic")
    # The second top-level image is the primary (the first is a green 320x240 frame); stored 400x600 with
    # a 90° rotation box, so decoded upright as 600x400.
    assert (image.width, image.height, image.bands) == (600, 400, 3)
    assert upright_error(image, testdata) < 8 < upright_error(image.rot180(), testdata)
    # The Display P3 profile it was made with (tests/images/README.md), the one libvips sees in the header.
    p3 = pyvips.Image.black(1, 1, bands=3).copy(interpretation="srgb").icc_transform("p3")
    assert image.get("icc-profile-data") == p3.get("icc-profile-data")


def test_libvips_reads_the_heic_header_but_cannot_decode_hevc(testdata: Path) -> None:
    """Why HEIC needs pillow-heif, and why the node's header probe (libvips) never decodes HEVC."""
    info = probe(testdata / HEIC, "heic", 100_000_000)
    assert (info.width, info.height, info.pages) == (600, 400, 2)
    with pytest.raises(pyvips.Error, match="HEVC"):
        pyvips.Image.new_from_file(str(testdata / HEIC)).avg()


@pytest.mark.parametrize(
    ("name", "size"), [("w300.jpg", (300, 200)), ("w150.avif", (150, 100)), ("thumb.webp", (150, 150))]
)
def test_heic_variants_are_srgb_without_metadata(
    testdata: Path, tmp_path: Path, name: str, size: tuple[int, int]
) -> None:
    source = open_source(testdata / HEIC)
    assert source.decoded is not None and not source.multi_page
    dest = tmp_path / name
    build_variant(source.path, parse_variant(name), dest, RenderOptions(), False, source.decoded)
    out = pyvips.Image.new_from_file(str(dest))
    assert (out.width, out.height) == size
    assert not [f for f in out.get_fields() if f.startswith(("exif-", "icc-"))]
    if name != "thumb.webp":
        assert upright_error(out, testdata) < 8


def test_bmp_and_ico(testdata: Path, tmp_path: Path) -> None:
    photo = Image.open(testdata / "chelsea_gps.jpg").resize((300, 200))
    bmp = write(tmp_path, "p.bmp", pillow_bytes(photo, "BMP"))
    assert probe_foreign(bmp, "bmp", 100_000_000, 500).width == 300
    assert upright_error(decode(bmp, "bmp"), testdata) < 4
    icon = Image.new("RGBA", (48, 48), (200, 10, 10, 255))
    icon.putpixel((0, 0), (0, 0, 0, 0))
    ico = write(tmp_path, "i.ico", pillow_bytes(icon, "ICO", sizes=[(16, 16), (48, 48)]))
    info = probe_foreign(ico, "ico", 100_000_000, 500)
    image = decode(ico, "ico")  # the largest icon, alpha kept
    assert (info.width, image.width, image.bands, image.getpoint(0, 0)[3], image.getpoint(5, 5)[3]) == (
        48,
        48,
        4,
        0,
        255,
    )
    with pytest.raises(UnsupportedImage):  # sniffed as one format, parsed as another: a polyglot
        decode(write(tmp_path, "png-as-bmp", (testdata / "coins_gray.png").read_bytes()), "bmp")


def _apng(tmp_path: Path, **options: Any) -> Path:
    frames = [Image.new("RGB", (40, 20), c) for c in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    data = pillow_bytes(frames[0], "PNG", save_all=True, append_images=frames[1:], loop=2, **options)
    return write(tmp_path, "a.png", data)


def test_animated_png_frames_delays_and_default_image(tmp_path: Path) -> None:
    path = _apng(tmp_path, duration=[50, 60, 70])
    assert apng_frames(path) == 3 and probe(path, "png", 100_000_000).pages == 3
    source = open_source(path)
    assert source.decoded is not None and source.pages == 3 and source.multi_page
    assert list(source.decoded.get("delay")) == [50, 60, 70] and source.decoded.get("loop") == 2
    # A default image outside the animation is not a frame of it.
    hidden = _apng(tmp_path, duration=40, default_image=True)
    assert open_source(hidden).pages == 2
    still = write(tmp_path, "s.png", pillow_bytes(Image.new("RGB", (4, 4)), "PNG"))
    assert apng_frames(still) == 1 and open_source(still).decoded is None


@pytest.mark.parametrize(("name", "size"), [("w300.webp", (40, 20)), ("30x30.avif", (20, 20))])
def test_animated_png_variants_keep_every_frame(tmp_path: Path, name: str, size: tuple[int, int]) -> None:
    source = open_source(_apng(tmp_path, duration=[50, 60, 70]))
    dest = tmp_path / name
    build_variant(source.path, parse_variant(name), dest, RenderOptions(), True, source.decoded)
    out = pyvips.Image.new_from_file(str(dest), n=-1)
    page_h = out.get("page-height")
    assert (out.width, page_h, out.get("n-pages")) == (*size, 3)
    reds = [out.getpoint(5, i * page_h + 5)[0] for i in range(3)]
    assert reds[0] > 200 and reds[1] < 60 and reds[2] < 60


def test_original_rendition_is_every_pixel_as_png(testdata: Path, tmp_path: Path) -> None:
    assert parse_stored_variant("full.png") == ORIGINAL_RENDITION
    with pytest.raises(Exception, match="no such variant"):
        parse_variant("full.png")  # never requestable: only a node's answer to `original`
    photo = Image.open(testdata / "chelsea_gps.jpg").resize((300, 200))
    source = open_source(write(tmp_path, "p.bmp", pillow_bytes(photo, "BMP")))
    dest = tmp_path / "full.png"
    build_variant(source.path, ORIGINAL_RENDITION, dest, RenderOptions(), False, source.decoded)
    out = pyvips.Image.new_from_file(str(dest))
    assert (out.width, out.height) == (300, 200) and dest.read_bytes()[:4] == b"\x89PNG"
    assert float((out - source.decoded).abs().max()) == 0  # lossless


@pytest.mark.parametrize(
    ("fmt", "make"),
    [
        ("heic", hostile.heic_bomb),
        ("tiff", hostile.tiff_bomb),
        ("bmp", hostile.bmp_bomb),
        ("ico", lambda: hostile.ico_holding(hostile.png_header_only(30000))),
        ("png", lambda: hostile.apng_claiming_frames(501)),
    ],
)
def test_bombs_refused_from_the_header(tmp_path: Path, fmt: str, make: Any) -> None:
    path = write(tmp_path, "bomb", make())
    with pytest.raises(InvalidImage, match="limit"):
        probe_foreign(path, fmt, 100_000_000, 500)
    if fmt != "tiff":  # decoded here: the decoder checks the same limits before it decodes
        with pytest.raises(InvalidImage, match="limit"):
            decode(path, fmt, 100_000_000, 500)


def test_corrupt_data_is_an_invalid_image(testdata: Path, tmp_path: Path) -> None:
    heic = (testdata / HEIC).read_bytes()
    mdat = heic.find(b"mdat") + 8
    with pytest.raises(InvalidImage, match="corrupt or truncated"):
        decode(write(tmp_path, "c.heic", heic[:mdat] + b"\xff" * (len(heic) - mdat)), "heic")
    bmp = pillow_bytes(Image.new("RGB", (64, 64), (1, 2, 3)), "BMP")
    with pytest.raises(InvalidImage, match="truncated"):
        decode(write(tmp_path, "c.bmp", bmp[: len(bmp) // 2]), "bmp")


def test_the_node_process_never_loads_these_decoders() -> None:
    """Pillow and pillow-heif (C decoders of untrusted bytes) are imported by sandbox workers only."""
    code = "import sys, replicator.node_root; print(sorted({'PIL', 'pillow_heif'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
