"""Upload validation: the type from magic bytes (never the client's word), then a libvips header probe;
off the request path, a full decode check, EXIF facts and a perceptual hash.

The header probe reads dimensions and the frame count without decoding pixels, so an oversized image
(a 30000x30000 PNG of a few hundred KB) is refused before any pixel buffer exists. It runs in the node
process for what libvips reads (HEIC included: libheif parses its boxes, no HEVC is decoded) and in a
sandboxed worker for BMP and ICO (``probe_upload``), which only Pillow reads. The full decode
(``decode_check``, or ``storage_node.decoders`` for what libvips cannot decode) runs inside a sandboxed
worker process (``storage_node.sandbox_worker``) so that a codec crash or runaway costs one job, never the node.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyvips

from common.errors import InvalidImage, UnsupportedImage
from storage_node.objects.formats import CONTENT_TYPES

if TYPE_CHECKING:
    from storage_node.sandbox import SandboxPool

OUT_OF_MEMORY = "decoding this image needs more memory than a worker may use"

# The libvips loader each sniffed format must be read by: a file that sniffs as one format but that
# libvips would parse as another (a polyglot) is refused.
LOADERS = {
    "jpeg": "jpegload",
    "png": "pngload",
    "gif": "gifload",
    "webp": "webpload",
    "avif": "heifload",
    "heic": "heifload",  # the header only: libvips's libheif has no HEVC decoder (see storage_node.decoders)
    "tiff": "tiffload",
}
# Read by Pillow inside a sandboxed worker, header included: libvips has no loader for them but ImageMagick's.
SANDBOX_PROBED = frozenset({"bmp", "ico"})


@dataclass(frozen=True)
class ImageInfo:
    fmt: str
    content_type: str
    width: int  # as displayed (EXIF orientation applied)
    height: int
    pages: int


# libvips loader classes that may run at all; every other loader (SVG, PDF, JPEG 2000, FITS, matrix, raw,
# ImageMagick, ...) is blocked, so nothing minicdn does can reach their parsers, whatever the bytes claim.
ALLOWED_LOADER_CLASSES = (
    "VipsForeignLoadJpeg",
    "VipsForeignLoadPng",
    "VipsForeignLoadNsgif",
    "VipsForeignLoadWebp",
    "VipsForeignLoadHeif",
    "VipsForeignLoadTiff",
)


def header_field(image: pyvips.Image, name: str, default: Any = None) -> Any:
    """A metadata field of ``image``, or ``default`` when it has none by that name."""
    return image.get(name) if image.get_typeof(name) else default


def displayed_size(image: pyvips.Image) -> tuple[int, int]:
    """(width, height) once the EXIF orientation is applied (5-8 are the quarter turns)."""
    if header_field(image, "orientation", 1) in (5, 6, 7, 8):
        return image.height, image.width
    return image.width, image.height


def first_frame(image: pyvips.Image) -> pyvips.Image:
    """The top page of a multi-page (animated) image, which libvips loads as one tall strip."""
    page_h = header_field(image, "page-height", image.height)
    return image.crop(0, 0, image.width, page_h) if page_h < image.height else image


def restrict_loaders() -> None:
    """Process-wide: block libvips's untrusted loaders and every loader of a format minicdn does not accept."""
    pyvips.block_untrusted_set(True)
    pyvips.operation_block_set("VipsForeignLoad", True)
    for name in ALLOWED_LOADER_CLASSES:
        pyvips.operation_block_set(name, False)


def probe(path: Path, fmt: str, max_pixels: int, max_frames: int = 500) -> ImageInfo:
    """Read the header with libvips (blocking; run in a thread) and check it against the limits."""
    try:
        image = pyvips.Image.new_from_file(str(path), access="sequential")
        loader = image.get("vips-loader")
        width, height = displayed_size(image)
        pages = header_field(image, "n-pages", 1)
    except pyvips.Error as exc:
        detail = str(exc).splitlines()[0]
        if str(path) in detail:  # the node's temp path says nothing to the client
            detail = f"not a valid {fmt} file"
        raise InvalidImage(f"cannot read the image header: {detail}") from None
    if loader != LOADERS[fmt]:
        raise UnsupportedImage(f"content looks like {fmt} but decodes as {loader}")
    if fmt == "png":  # libvips sees an animated PNG's default image only: its frames are counted here
        pages = apng_frames(path)
    if width <= 0 or height <= 0 or width * height > max_pixels:
        raise InvalidImage(f"image is {width}x{height}, over the {max_pixels}-pixel limit")
    if pages > max_frames:
        raise InvalidImage(f"image has {pages} frames, over the {max_frames}-frame limit")
    return ImageInfo(fmt, CONTENT_TYPES[fmt], width, height, pages)


async def probe_upload(sandbox: SandboxPool, path: Path, fmt: str, max_pixels: int, max_frames: int) -> ImageInfo:
    """The header probe of an upload: in a thread for what libvips reads, in a sandboxed worker for the rest."""
    if fmt not in SANDBOX_PROBED:
        return await asyncio.to_thread(probe, path, fmt, max_pixels, max_frames)
    job = {"op": "probe", "path": str(path), "max_pixels": max_pixels, "max_frames": max_frames}
    return ImageInfo(**await sandbox.run(job))


def apng_frames(path: Path) -> int:
    """The frame count of a PNG's animation control chunk (``acTL``, before the first ``IDAT``); 1 without.

    A walk over the chunk headers only (a few reads, no data decoded), so the node can apply the frame
    limit to an animated PNG at upload like to a GIF's.
    """
    with path.open("rb") as fobj:
        fobj.seek(8)
        # Bounded: an acTL hidden behind more chunks than this is ignored, so the PNG is a still image
        # everywhere (libvips reads its default image only), never an animation past the frame limit.
        for _chunk in range(4096):
            header = fobj.read(8)
            if len(header) < 8:
                break
            length, kind = int.from_bytes(header[:4], "big"), header[4:]
            if kind == b"acTL":
                frames = int.from_bytes(fobj.read(4), "big")
                return max(frames, 1)
            if kind in (b"IDAT", b"IEND"):
                break
            fobj.seek(length + 4, 1)  # data and CRC
    return 1


def decode_check(path: Path, pages: int) -> None:
    """Decode every pixel of every frame, streaming (memory stays flat); raise InvalidImage when the data is
    truncated or corrupt (``fail_on="error"``: no half-grey image ever becomes ``ready``). Blocking."""
    with _decode_errors():
        options: dict[str, Any] = {"n": -1} if pages > 1 else {}
        image = pyvips.Image.new_from_file(str(path), access="sequential", fail_on="error", **options)
        image.avg()


def checked_dhash(path: Path) -> int:
    """``decode_check`` of a single-frame image and its ``dhash``, in one decoding pass: the hash's 9x8 box
    filter reads every pixel (a JPEG's entropy decoding, the bulk of the work, is then done once, not twice).
    Blocking."""
    with _decode_errors():
        image = pyvips.Image.new_from_file(str(path), access="sequential", fail_on="error")
        turned = header_field(image, "orientation", 1) in (5, 6, 7, 8)
        width, height = (8, 9) if turned else (9, 8)  # upright after autorot: 9 wide, 8 high
        small = image.resize(width / image.width, vscale=height / image.height).copy_memory()
    return _dhash_of(small.autorot())


@contextlib.contextmanager
def _decode_errors() -> Iterator[None]:
    try:
        yield
    except pyvips.Error as exc:
        detail = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        if any("out of memory" in line for line in detail):
            raise InvalidImage(OUT_OF_MEMORY) from None
        raise InvalidImage(f"image data is corrupt or truncated: {(detail or ['decode failed'])[0]}") from None


def _exif_text(image: pyvips.Image, field: str) -> str | None:
    """libvips shows an EXIF string as ``value (description, type, ...)``: keep the value."""
    raw = header_field(image, field)
    return (str(raw).split(" (", 1)[0].strip() or None) if raw is not None else None


def _gps_degrees(image: pyvips.Image, axis: str) -> float | None:
    text = _exif_text(image, f"exif-ifd3-GPS{axis}")
    ref = _exif_text(image, f"exif-ifd3-GPS{axis}Ref")
    if not text:
        return None
    try:
        parts = [int(a) / int(b) for a, b in (p.split("/") for p in text.split())]
    except (ValueError, ZeroDivisionError):
        return None
    degrees: float = sum(v / 60**i for i, v in enumerate(parts[:3]))  # degrees, minutes, seconds
    return round(-degrees if ref in ("S", "W") else degrees, 6)


def exif_facts(image: pyvips.Image, keep_gps: bool) -> dict[str, Any]:
    """Camera make/model, when taken, the orientation tag and whether GPS was present (the position itself
    only when ``keep_gps``)."""
    taken = _exif_text(image, "exif-ifd2-DateTimeOriginal") or _exif_text(image, "exif-ifd0-DateTime")
    if taken and len(taken) >= 19 and taken[4] == ":" and taken[7] == ":":
        taken = f"{taken[:4]}-{taken[5:7]}-{taken[8:10]}T{taken[11:19]}"
    facts: dict[str, Any] = {
        "make": _exif_text(image, "exif-ifd0-Make"),
        "model": _exif_text(image, "exif-ifd0-Model"),
        "taken_at": taken,
        "orientation": header_field(image, "orientation"),
        "had_gps": any(f.startswith("exif-ifd3-") for f in image.get_fields()),
    }
    if keep_gps and facts["had_gps"]:
        facts["gps"] = {"lat": _gps_degrees(image, "Latitude"), "lon": _gps_degrees(image, "Longitude")}
    return facts


def dhash(path: Path) -> int:
    """64-bit difference hash of the upright first frame: 9x8 grey thumbnail, one bit per horizontal step.

    Stable under re-encoding, resizing and metadata changes; a different photo lands ~32 bits away.
    """
    return _dhash_of(first_frame(pyvips.Image.thumbnail(str(path), 9, height=8, size="force", fail_on="error")))


def dhash_image(image: pyvips.Image) -> int:
    """``dhash`` of an image decoded outside libvips (``storage_node.decoders``)."""
    return _dhash_of(pyvips.Image.thumbnail_image(first_frame(image), 9, height=8, size="force"))


def _dhash_of(small: pyvips.Image) -> int:
    grey = small.colourspace("b-w")[0].cast("uchar")
    pixels = grey.write_to_memory()
    bits = 0
    for row in range(8):
        for col in range(8):
            bits = (bits << 1) | (pixels[row * 9 + col] < pixels[row * 9 + col + 1])
    return bits
