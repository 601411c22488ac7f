from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import InvalidImage, UnsupportedImage
from storage_node.validate import probe, sniff

FILES = {"chelsea_gps.jpg": "jpeg", "coins_gray.png": "png", "retina.webp": "webp", "anim_tiny.gif": "gif"}


@pytest.mark.parametrize(("name", "fmt"), sorted(FILES.items()))
def test_sniff_real_files(testdata: Path, name: str, fmt: str) -> None:
    assert sniff((testdata / name).read_bytes()[:64]) == fmt


@pytest.mark.parametrize("head", [
    b"", b"hello world", b"<svg xmlns='http://www.w3.org/2000/svg'>", b"%PDF-1.7", b"II*\x00", b"BM....",
    b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom",
])
def test_sniff_refuses_everything_else(head: bytes) -> None:
    with pytest.raises(UnsupportedImage):
        sniff(head)


def test_sniff_isobmff_brands() -> None:
    avif = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf"
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
    mif1_avif = b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf"
    assert (sniff(avif), sniff(heic), sniff(mif1_avif)) == ("avif", "heic", "avif")


def test_probe_reports_displayed_dimensions(testdata: Path) -> None:
    info = probe(testdata / "astronaut_rot8_gps.jpg", "jpeg", 100_000_000)
    assert (info.width, info.height) == (2048, 1536)  # stored 1536x2048 with Orientation=8
    gif = probe(testdata / "anim_tiny.gif", "gif", 100_000_000)
    assert gif.pages > 1


def test_probe_limits_and_mismatch(testdata: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidImage, match="limit"):
        probe(testdata / "chelsea_gps.jpg", "jpeg", 1000)
    with pytest.raises(UnsupportedImage):
        probe(testdata / "coins_gray.png", "jpeg", 100_000_000)  # sniffed one thing, decodes as another
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 100)
    with pytest.raises(InvalidImage):
        probe(broken, "jpeg", 100_000_000)
