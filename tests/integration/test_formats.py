"""Every accepted input format end to end on a real cluster: an iPhone-style HEIC (HEVC, rotated, Display P3,
two top-level images), TIFF, BMP and ICO (served only as web formats, their `original` a PNG rendition) and
an animated PNG (kept animated in WebP and AVIF); truncated files of each are rejected after the 201 and
leave nothing behind."""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any

import pyvips
from PIL import Image

from tests.cluster import TestCluster
from tests.integration.test_pipeline import NODES, get, node_url, on_disk, origin

MAGIC = {"image/jpeg": b"\xff\xd8\xff", "image/webp": b"RIFF", "image/avif": b"ftypavif", "image/png": b"\x89PNG"}


def upright_error(data: bytes, testdata: Path) -> float:
    """Mean absolute difference from the upright chelsea photo at the same size (~3 when upright, ~35 turned)."""
    out = pyvips.Image.new_from_buffer(data, "")
    ref = pyvips.Image.thumbnail(str(testdata / "chelsea_gps.jpg"), out.width, height=out.height, size="force")
    return float((out.extract_band(0, n=3) - ref).abs().avg())


async def fetch(cluster: TestCluster, up: dict[str, Any], variant: str, accept: str = "") -> tuple[str, bytes]:
    status, headers, data = await get(cluster, node_url(cluster, origin(up), up["image_id"], variant), Accept=accept)
    assert status == 200, (variant, data[:200])
    content_type = headers["Content-Type"]
    assert MAGIC[content_type] in data[:16], (variant, content_type)
    return content_type, data


async def signed_original(cluster: TestCluster, image_id: str) -> tuple[str, bytes, str]:
    status, found = await cluster.api("GET", f"/v1/images/{image_id}/url?variant=original&client_ip=3.0.1.10")
    assert status == 200, found
    status, headers, data = await get(cluster, found["url"])
    assert status == 200, data[:200]
    return headers["Content-Type"], data, headers["Cache-Control"]


async def test_iphone_heic_becomes_ready_upright_and_serves_jpeg_webp_avif(
    cluster: TestCluster, testdata: Path
) -> None:
    heic = (testdata / "iphone_rot6_p3.heic").read_bytes()
    up = await cluster.upload(heic)
    body = await cluster.wait_ready(up["image_id"])
    # The primary image (not the 320x240 one before it), upright: stored 400x600 with a 90° rotation box.
    assert (body["format"], body["width"], body["height"], body["pages"]) == ("heic", 600, 400, 2), body
    assert (body["exif"]["make"], body["exif"]["taken_at"]) == ("Apple", "2024-05-17T14:03:22")
    for variant, content_type, size in (
        ("w300.jpg", "image/jpeg", (300, 200)),
        ("w300.webp", "image/webp", (300, 200)),
        ("w150.avif", "image/avif", (150, 100)),
        ("thumb.jpg", "image/jpeg", (150, 150)),
    ):
        got_type, data = await fetch(cluster, up, variant)
        image = pyvips.Image.new_from_buffer(data, "")
        assert (got_type, (image.width, image.height)) == (content_type, size), variant
        assert not image.get_typeof("icc-profile-data")  # Display P3 converted to sRGB, profile stripped
        if variant != "thumb.jpg":
            assert upright_error(data, testdata) < 8, variant
    # A replica in another region renders from its own copy of the HEIC alike.
    await cluster.wait_replicated(up["image_id"])
    other = next(n for n in NODES if n != origin(up))
    status, headers, data = await get(cluster, node_url(cluster, other, up["image_id"], "w600.webp"))
    assert status == 200 and headers["Content-Type"] == "image/webp" and upright_error(data, testdata) < 8
    # The owner's original is the HEIC as uploaded (HEIC is a format people keep; it is never a variant).
    content_type, data, cache = await signed_original(cluster, up["image_id"])
    assert (content_type, data, cache.startswith("private")) == ("image/heic", heic, True)


def _tiff(testdata: Path) -> bytes:
    """The photo's pixels turned 90° counter-clockwise, with Orientation 6 saying how to show them."""
    image = pyvips.Image.thumbnail(str(testdata / "chelsea_gps.jpg"), 600).rot270().copy()
    image.set_type(pyvips.GValue.gint_type, "orientation", 6)
    return bytes(image.tiffsave_buffer(compression="deflate"))


def _pillow(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


async def test_tiff_bmp_and_ico_are_served_only_as_web_formats(cluster: TestCluster, testdata: Path) -> None:
    photo = Image.open(testdata / "chelsea_gps.jpg").resize((600, 400))
    icon = photo.crop((100, 0, 500, 400)).resize((64, 64)).convert("RGBA")
    icon.putpixel((0, 0), (0, 0, 0, 0))
    uploads = {
        "tiff": (_tiff(testdata), (600, 399)),
        "bmp": (_pillow(photo, "BMP"), (600, 400)),
        "ico": (_pillow(icon, "ICO", sizes=[(64, 64), (32, 32)], bitmap_format="bmp"), (64, 64)),
    }
    ups = {fmt: await cluster.upload(data) for fmt, (data, _size) in uploads.items()}
    for fmt, up in ups.items():
        body = await cluster.wait_ready(up["image_id"])
        assert (body["format"], body["width"], body["height"]) == (fmt, *uploads[fmt][1]), body
        for variant in ("w300.jpg", "w300.webp", "w150.avif", "w300.png"):
            await fetch(cluster, up, variant)
        # `auto` negotiates among web formats only, whatever the client says it takes.
        content_type, _ = await fetch(cluster, up, "w300.auto", accept="image/tiff,image/bmp,image/x-icon,*/*")
        assert content_type == "image/jpeg"
        # The owner's `original` is a PNG of every pixel, upright, never the TIFF/BMP/ICO bytes.
        content_type, data, cache = await signed_original(cluster, up["image_id"])
        full = pyvips.Image.new_from_buffer(data, "")
        assert (content_type, (full.width, full.height)) == ("image/png", uploads[fmt][1]), fmt
        assert data != uploads[fmt][0] and cache.startswith("private")
    for fmt in ("tiff", "bmp"):
        _, data = await fetch(cluster, ups[fmt], "w300.jpg")
        assert upright_error(data, testdata) < 8, fmt
    _, data = await fetch(cluster, ups["ico"], "w300.png")  # the 64x64 icon, alpha kept
    image = pyvips.Image.new_from_buffer(data, "")
    assert (image.width, image.bands, image.getpoint(0, 0)[3]) == (64, 4, 0)


async def _gone(cluster: TestCluster, image_id: str) -> bool:
    """No file of ``image_id`` on any node and no replica row."""
    return on_disk(cluster, image_id) == {n: [] for n in NODES} and await cluster.replicas(image_id) == {}


def _apng(frames: int) -> bytes:
    colours = [(220, 30, 30), (30, 220, 30), (30, 30, 220), (220, 220, 30)]
    images = [Image.new("RGB", (120, 80), colours[i % 4]) for i in range(frames)]
    return _pillow(images[0], "PNG", save_all=True, append_images=images[1:], duration=[80, 120, 160, 200], loop=0)


async def test_animated_png_stays_animated_and_truncated_inputs_leave_nothing(
    cluster: TestCluster, testdata: Path
) -> None:
    up = await cluster.upload(_apng(4))
    body = await cluster.wait_ready(up["image_id"])
    assert (body["width"], body["height"], body["pages"], body["animated"]) == (120, 80, 4, True), body
    for variant in ("w300.webp", "w150.avif", "150x150.webp"):
        _, data = await fetch(cluster, up, variant)
        anim = pyvips.Image.new_from_buffer(data, "", n=-1)
        assert anim.get("n-pages") == 4, variant
        page_h = anim.get("page-height")
        firsts = [anim.crop(0, i * page_h, anim.width, page_h).getpoint(2, 2)[:3] for i in range(4)]
        assert len({tuple(round(c / 40) for c in px) for px in firsts}) == 4, (variant, firsts)  # 4 colours
        if variant.endswith("webp"):
            assert list(anim.get("delay")) == [80, 120, 160, 200]
    _, data = await fetch(cluster, up, "w300.jpg")  # JPEG cannot animate: the first frame
    assert pyvips.Image.new_from_buffer(data, "").height == 80

    # Headers whole, pixel data not: the 201 comes first, then the decode in the sandbox rejects them. (A cut
    # HEIC or TIFF loses its header, which libheif and libtiff read from the end too: 422 at the PUT, in
    # the hostile catalogue.)
    heic = (testdata / "iphone_rot6_p3.heic").read_bytes()
    mdat, tiff = heic.find(b"mdat") + 8, _tiff(testdata)
    bmp, apng = _pillow(Image.open(testdata / "chelsea_gps.jpg").resize((300, 200)), "BMP"), _apng(4)
    truncated = {
        "heic": heic[:mdat] + b"\xff" * (len(heic) - mdat),  # the HEVC stream overwritten
        "tiff": tiff[:200] + b"\xff" * 8000 + tiff[8200:],  # the deflate stream overwritten
        "bmp": bmp[: len(bmp) // 2],
        "apng": apng[: len(apng) - 40],
    }
    for fmt, data in truncated.items():
        cut = await cluster.upload(data)
        assert cut["status"] == "uploaded", fmt
        body = await cluster.wait_ready(cut["image_id"], status="rejected")
        assert "corrupt or truncated" in body["reason"], (fmt, body)
        # A member that copied it before the rejection drops its copy and its replica row on the event.
        await cluster.wait_for(functools.partial(_gone, cluster, cut["image_id"]), f"the truncated {fmt} gone")
    for node_id in NODES:
        assert cluster.files_under(node_id, "tmp") == []
