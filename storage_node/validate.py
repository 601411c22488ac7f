"""Upload validation: the type from magic bytes (never the client's word), then a libvips header probe.

The header probe reads dimensions without decoding pixels, so an oversized image is refused before
any pixel buffer exists. The full decode check is part of off-path processing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyvips

from common.errors import InvalidImage, UnsupportedImage

CONTENT_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",
    "avif": "image/avif",
    "heic": "image/heic",
}
# The libvips loader each sniffed format must be read by: a file that sniffs as one format but that
# libvips would parse as another (a polyglot) is refused.
LOADERS = {"jpeg": "jpegload", "png": "pngload", "gif": "gifload", "webp": "webpload",
           "avif": "heifload", "heic": "heifload"}
_HEIC_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"}
_AVIF_BRANDS = {b"avif", b"avis"}


@dataclass(frozen=True)
class ImageInfo:
    fmt: str
    content_type: str
    width: int  # as displayed (EXIF orientation applied)
    height: int
    pages: int


def sniff(head: bytes) -> str:
    """The format named by the first bytes, or raise UnsupportedImage."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp" and len(head) >= 12:
        box_size = int.from_bytes(head[:4], "big")
        brands = {head[8:12]} | {head[i:i + 4] for i in range(16, min(box_size, len(head)) - 3, 4)}
        if brands & _AVIF_BRANDS:
            return "avif"
        if brands & _HEIC_BRANDS:
            return "heic"
    raise UnsupportedImage("not a JPEG, PNG, GIF, WebP, AVIF or HEIC image")


def probe(path: Path, fmt: str, max_pixels: int) -> ImageInfo:
    """Read the header with libvips (blocking; run in a thread) and check it against the limits."""
    try:
        image = pyvips.Image.new_from_file(str(path), access="sequential")
        loader = image.get("vips-loader")
        width, height = image.width, image.height
        fields = set(image.get_fields())
        pages = image.get("n-pages") if "n-pages" in fields else 1
        orientation = image.get("orientation") if "orientation" in fields else 1
    except pyvips.Error as exc:
        raise InvalidImage(f"cannot read the image header: {str(exc).splitlines()[0]}") from None
    if loader != LOADERS[fmt]:
        raise UnsupportedImage(f"content looks like {fmt} but decodes as {loader}")
    if width <= 0 or height <= 0 or width * height > max_pixels:
        raise InvalidImage(f"image is {width}x{height}, over the {max_pixels}-pixel limit")
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return ImageInfo(fmt, CONTENT_TYPES[fmt], width, height, pages)
