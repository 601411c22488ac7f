"""An upload's format from its magic bytes (storage_node.objects.formats)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import UnsupportedImage
from storage_node.objects.formats import CONTENT_TYPES, sniff

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
        b"II*\x00",
        b"BM....",
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


def test_every_sniffed_format_is_served_as_its_image_type() -> None:
    assert CONTENT_TYPES == {fmt: f"image/{fmt}" for fmt in (*FILES.values(), "avif", "heic")}
