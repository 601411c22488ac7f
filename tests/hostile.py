"""Hostile inputs made on the fly (nothing binary checked in): bombs, truncations, scripts, polyglots."""

from __future__ import annotations

import functools
import struct
import zlib
from pathlib import Path

import pyvips

PAYLOAD = b"<?php system($_GET['c']); ?><script>alert(1)</script>"


@functools.cache
def png_bomb(side: int = 30000) -> bytes:
    """A valid-header PNG of side x side grey pixels, all zero: a few hundred KB that would need
    side*side bytes (900 MB at 30000) once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    zeros = bytes(1 << 24)  # every row is a filter byte and pixels, all zero: one long run of zeros
    total, parts = (side + 1) * side, []
    for start in range(0, total, len(zeros)):
        parts.append(comp.compress(zeros[: min(len(zeros), total - start)]))
    body = b"".join(parts) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def truncated_jpeg(photo: Path) -> bytes:
    data = photo.read_bytes()
    return data[: len(data) * 2 // 3]


def svg_with_script() -> bytes:
    return (
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        b"<script>alert(document.cookie)</script><rect width='10' height='10'/></svg>"
    )


def jpeg_with_payload(photo: Path) -> bytes:
    return photo.read_bytes() + PAYLOAD


def text_as_jpeg() -> bytes:
    return b"just some text, saved as photo.jpg\n" * 20


def animated_gif(frames: int, side: int = 4) -> bytes:
    pixels = bytearray(side * side * frames)
    for f in range(frames):  # every frame a different black/white pattern (f in binary), so none is merged
        for bit in range(side * side):
            pixels[f * side * side + bit] = 255 if f >> bit & 1 else 0
    strip = pyvips.Image.new_from_memory(bytes(pixels), side, side * frames, 1, "uchar").copy(interpretation="b-w")
    strip.set_type(pyvips.GValue.gint_type, "page-height", side)
    return bytes(strip.gifsave_buffer())


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(side: int) -> bytes:
    """A PNG whose header says side x side and that has no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


def apng_claiming_frames(frames: int) -> bytes:
    """A 4x4 PNG whose animation control chunk announces ``frames`` frames (only the first is there)."""
    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0)
    actl = struct.pack(">II", frames, 0)
    fctl = struct.pack(">IIIIIHHBB", 0, 4, 4, 0, 0, 1, 10, 0, 0)
    idat = zlib.compress(bytes(5 * 4))
    chunks = [(b"IHDR", ihdr), (b"acTL", actl), (b"fcTL", fctl), (b"IDAT", idat), (b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(_png_chunk(k, d) for k, d in chunks)


def tiff_bomb(side: int = 100_000) -> bytes:
    """An 8x8 TIFF whose ImageWidth and ImageLength tags are rewritten to ``side``: a few hundred bytes that
    claim side*side pixels."""
    data = bytearray(pyvips.Image.black(8, 8).tiffsave_buffer())
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    (count,) = struct.unpack_from(order + "H", data, ifd)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        (tag,) = struct.unpack_from(order + "H", data, entry)
        if tag in (256, 257):  # ImageWidth, ImageLength: as LONG
            struct.pack_into(order + "HHII", data, entry, tag, 4, 1, side)
    return bytes(data)


def bmp_bomb(side: int = 50_000) -> bytes:
    """An RLE8 BMP whose header says side x side: 1 KB of palette and an end-of-bitmap marker."""
    palette = bytes(256 * 4)
    pixels = b"\x00\x01"  # RLE8 end of bitmap
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def ico_holding(image: bytes, side_byte: int = 0) -> bytes:
    """An icon directory of one entry whose data is ``image`` (a PNG, as Vista-style icons hold)."""
    entry = struct.pack("<BBBBHHII", side_byte, side_byte, 0, 0, 1, 32, len(image), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + image


def heic_bomb(side: int = 60_000) -> bytes:
    """A 64x64 HEIC whose image-size properties (``ispe``) are rewritten to side x side."""
    import io

    import pillow_heif
    from PIL import Image

    buf = io.BytesIO()
    pillow_heif.from_pillow(Image.new("RGB", (64, 64), (90, 120, 30))).save(buf, quality=50)
    data = bytearray(buf.getvalue())
    at = data.find(b"ispe")
    while at >= 0:
        struct.pack_into(">II", data, at + 8, side, side)  # after the box type: version/flags, then w, h
        at = data.find(b"ispe", at + 4)
    return bytes(data)
