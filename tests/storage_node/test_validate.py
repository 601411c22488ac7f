"""Upload validation after the sniff (storage_node.validate): the header probe and its limits, the full decode
check, EXIF facts, the perceptual hash and the blocked loaders."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import InvalidImage, UnsupportedImage
from storage_node.validate import probe
from tests.storage_node.test_formats import FILES


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


def test_png_bomb_refused_from_its_header_fast(tmp_path: Path) -> None:
    import resource
    import time

    from tests.hostile import png_bomb

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb())
    assert bomb.stat().st_size < 1_000_000
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(InvalidImage, match="30000x30000"):
        probe(bomb, "png", 100_000_000)
    assert time.perf_counter() - started < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100_000  # KB: no 900 MB buffer


def test_frame_limit(tmp_path: Path) -> None:
    from tests.hostile import animated_gif

    gif = tmp_path / "many.gif"
    gif.write_bytes(animated_gif(501))
    with pytest.raises(InvalidImage, match="501 frames"):
        probe(gif, "gif", 100_000_000, max_frames=500)
    assert probe(gif, "gif", 100_000_000, max_frames=501).pages == 501


def test_decode_check_catches_truncation(testdata: Path, tmp_path: Path) -> None:
    from storage_node.validate import decode_check
    from tests.hostile import truncated_jpeg

    cut = tmp_path / "cut.jpg"
    cut.write_bytes(truncated_jpeg(testdata / "chelsea_gps.jpg"))
    assert probe(cut, "jpeg", 100_000_000).width > 0  # the header alone looks fine
    with pytest.raises(InvalidImage, match="corrupt or truncated"):
        decode_check(cut, 1)
    for name in FILES:
        decode_check(testdata / name, probe(testdata / name, FILES[name], 100_000_000).pages)


def test_exif_facts_without_and_with_gps(testdata: Path) -> None:
    import pyvips

    from storage_node.validate import exif_facts

    image = pyvips.Image.new_from_file(str(testdata / "astronaut_rot8_gps.jpg"))
    facts = exif_facts(image, keep_gps=False)
    assert facts == {
        "make": "minicdn-test",
        "model": "Model X",
        "taken_at": "2024-05-01T10:00:00",
        "orientation": 8,
        "had_gps": True,
    }
    assert exif_facts(image, keep_gps=True)["gps"] == {"lat": 48.856667, "lon": 2.350833}
    assert exif_facts(pyvips.Image.new_from_file(str(testdata / "coins_gray.png")), False)["had_gps"] is False


def test_dhash_finds_reencodes_not_other_photos(testdata: Path, tmp_path: Path) -> None:
    import pyvips

    from storage_node.validate import dhash

    original = testdata / "chelsea_gps.jpg"
    small = tmp_path / "small.webp"
    pyvips.Image.new_from_file(str(original)).resize(0.4).webpsave(str(small), Q=50)
    base = dhash(original)
    assert bin(base ^ dhash(small)).count("1") <= 6
    for other in ("astronaut_rot8_gps.jpg", "coins_gray.png", "retina.webp"):
        assert bin(base ^ dhash(testdata / other)).count("1") > 12, other


def test_loaders_of_other_formats_are_blocked(testdata: Path, tmp_path: Path) -> None:
    """Defence in depth behind the magic-byte sniff: the SVG, CSV and vips-native parsers cannot run at all
    (nor ImageMagick's, which this libvips does not even carry); TIFF's, an accepted format, can."""
    import pyvips

    from storage_node.validate import restrict_loaders
    from tests.hostile import svg_with_script

    restrict_loaders()
    svg, csv, native, tiff = tmp_path / "x.svg", tmp_path / "x.csv", tmp_path / "x.v", tmp_path / "x.tif"
    svg.write_bytes(svg_with_script())
    csv.write_text("1 2\n3 4\n")
    pyvips.Image.black(8, 8).vipssave(str(native))
    pyvips.Image.black(8, 8).tiffsave(str(tiff))
    for path in (svg, csv, native):
        with pytest.raises(pyvips.Error):
            pyvips.Image.new_from_file(str(path)).avg()
    for path in [testdata / name for name in FILES] + [tiff]:
        assert pyvips.Image.new_from_file(str(path)).width > 0
