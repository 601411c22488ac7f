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
