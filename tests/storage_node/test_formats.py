"""An upload's format from its magic bytes (storage_node.objects.formats)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import UnsupportedImage
from storage_node.objects.formats import CONTENT_TYPES, INPUT_ONLY, sniff

FILES = {"chelsea_gps.jpg": "jpeg", "coins_gray.png": "png", "retina.webp": "webp", "anim_tiny.gif": "gif"}


@pytest.mark.parametrize(("name", "fmt"), sorted(FILES.items()))
def test_sniff_real_files(testdata: Path, name: str, fmt: str) -> None:
    assert sniff((testdata / name).read_bytes()[:64]) == fmt


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"hello world",
        b"<svg xmlns='http://www.w3.org/2000/svg'>",
        b"%PDF-1.7",
        b"II+\x00\x08\x00\x00\x00",  # BigTIFF
        b"BM....",
        b"BM" + bytes(12) + (99).to_bytes(4, "little"),  # "BM" without a known DIB header size
        b"\x00\x00\x01\x00\x00\x00",  # an icon directory of no icons
        b"\x00\x00\x02\x00\x01\x00",  # a cursor (CUR)
        b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1miaf",  # a HEIF naming neither HEVC nor AV1
        b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom",
    ],
)
def test_sniff_refuses_everything_else(head: bytes) -> None:
    with pytest.raises(UnsupportedImage):
        sniff(head)


def test_sniff_isobmff_brands() -> None:
    avif = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf"
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
    mif1_avif = b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf"
    assert (sniff(avif), sniff(heic), sniff(mif1_avif)) == ("avif", "heic", "avif")


def test_sniff_tiff_bmp_ico_heic_heads() -> None:
    assert sniff(b"II*\x00\x08\x00\x00\x00") == sniff(b"MM\x00*\x00\x00\x00\x08") == "tiff"
    assert sniff(b"BM" + bytes(12) + (40).to_bytes(4, "little")) == "bmp"
    assert sniff(b"\x00\x00\x01\x00\x01\x00" + bytes(16)) == "ico"


def test_sniff_real_heic(testdata: Path) -> None:
    assert sniff((testdata / "iphone_rot6_p3.heic").read_bytes()[:64]) == "heic"


def test_every_sniffed_format_is_served_as_its_image_type() -> None:
    assert CONTENT_TYPES == {
        **{fmt: f"image/{fmt}" for fmt in (*FILES.values(), "avif", "heic", "tiff", "bmp")},
        "ico": "image/vnd.microsoft.icon",
    }
    assert INPUT_ONLY == {CONTENT_TYPES[fmt] for fmt in ("tiff", "bmp", "ico")}
