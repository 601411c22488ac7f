"""An upload's format from its magic bytes (never the client's word), and the content type it is served as."""

from __future__ import annotations

from common.errors import UnsupportedImage

CONTENT_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",
    "avif": "image/avif",
    "heic": "image/heic",
    "tiff": "image/tiff",
    "bmp": "image/bmp",
    "ico": "image/vnd.microsoft.icon",
}
# Accepted as input only: never handed out as themselves (browsers do not show them), so their `original`
# is a PNG rendition (docs/api.md).
INPUT_ONLY = frozenset({"image/tiff", "image/bmp", "image/vnd.microsoft.icon"})
_HEIC_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"}
_AVIF_BRANDS = {b"avif", b"avis"}
_BMP_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}  # BITMAPCOREHEADER ... BITMAPV5HEADER


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
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, min(box_size, len(head)) - 3, 4)}
        if brands & _AVIF_BRANDS:
            return "avif"
        if brands & _HEIC_BRANDS:
            return "heic"
    if head[:4] in (b"II*\x00", b"MM\x00*"):  # classic TIFF only (BigTIFF is refused)
        return "tiff"
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "bmp"
    if head[:4] == b"\x00\x00\x01\x00" and len(head) >= 6 and int.from_bytes(head[4:6], "little") > 0:
        return "ico"
    raise UnsupportedImage("not a JPEG, PNG, GIF, WebP, AVIF, HEIC, TIFF, BMP or ICO image")
