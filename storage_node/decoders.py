"""Decoders outside libvips, for what its bundled build cannot read: HEIC/HEIF (HEVC, through pillow-heif's
libheif + libde265), BMP and ICO (Pillow; libvips reads them only through ImageMagick, which is not allowed)
and the frames of an animated PNG (libvips's pngload gives the default image only).

Imported only inside the sandbox worker (``storage_node.sandbox_worker``): these C decoders never run in a
node process. Each result is a pyvips image in memory (an animation as a strip of frames with
``page-height``, like libvips's own loaders), upright (libheif applies HEIF's rotation and mirror boxes)
and tagged with its ICC profile, so the render pipeline treats it like any libvips image. The pixel and
frame limits are checked on the header, before any pixel buffer exists.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pillow_heif
import pyvips
from PIL import Image, ImageFile, UnidentifiedImageError

from common.errors import InvalidImage, UnsupportedImage
from storage_node.objects.formats import CONTENT_TYPES, sniff
from storage_node.validate import ImageInfo, apng_frames, probe

# Decoded here rather than by libvips (an animated PNG too, see ``Source``).
FOREIGN = frozenset({"heic", "bmp", "ico"})
# Probed here too: libvips cannot even read their headers.
PILLOW_PROBED = frozenset({"bmp", "ico"})
# Formats whose libvips loader reads every frame (``n=-1``).
LIBVIPS_ANIMATED = frozenset({"gif", "webp"})
_NO_LIMIT = 1 << 40  # lazy variants: the source already passed the limits when it was uploaded

# Only the primary image is read: no thumbnails, depth maps or auxiliary images are parsed.
pillow_heif.options.THUMBNAILS = False
pillow_heif.options.DEPTH_IMAGES = False
pillow_heif.options.AUX_IMAGES = False
# libheif decodes a grid's tiles in threads: no more than the worker's libvips may use (its thread budget).
pillow_heif.options.DECODE_THREADS = max(1, int(os.environ.get("VIPS_CONCURRENCY") or 1))
pillow_heif.options.DISABLE_SECURITY_LIMITS = False  # libheif's own limits stay on too
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a half-grey image


@dataclass(frozen=True)
class Source:
    """An original as the render pipeline reads it: from its file through libvips, or ``decoded`` here."""

    path: Path
    fmt: str
    decoded: pyvips.Image | None
    pages: int  # frames decoded here (1 for a still image); 0 when libvips reads the file

    @property
    def multi_page(self) -> bool:
        """Whether an animation can come out of it (libvips reads every frame of a GIF or WebP itself)."""
        return self.pages > 1 or (self.decoded is None and self.fmt in LIBVIPS_ANIMATED)


def open_source(path: Path, max_pixels: int = _NO_LIMIT, max_frames: int = _NO_LIMIT) -> Source:
    """Sniff ``path`` and decode it here when libvips cannot (blocking)."""
    with path.open("rb") as fobj:
        fmt = sniff(fobj.read(64))
    frames = apng_frames(path) if fmt == "png" else 1
    if fmt in FOREIGN or frames > 1:
        image = decode(path, fmt, max_pixels, max_frames)
        return Source(path, fmt, image, _pages(image))
    return Source(path, fmt, None, 0)


def _pages(image: pyvips.Image) -> int:
    page_h = int(image.get("page-height")) if image.get_typeof("page-height") else int(image.height)
    return max(1, int(image.height) // page_h)


def probe_foreign(path: Path, fmt: str, max_pixels: int, max_frames: int) -> ImageInfo:
    """The header probe for every format, BMP and ICO read by Pillow (in the worker), the rest by libvips."""
    if fmt not in PILLOW_PROBED:
        return probe(path, fmt, max_pixels, max_frames)
    with _pillow(max_pixels, fmt), Image.open(path) as im:
        if im.format != fmt.upper():
            raise UnsupportedImage(f"content looks like {fmt} but decodes as {im.format}")
        width, height = im.size
    _check_size(width, height, max_pixels)
    return ImageInfo(fmt, CONTENT_TYPES[fmt], width, height, 1)


def decode(path: Path, fmt: str, max_pixels: int = _NO_LIMIT, max_frames: int = _NO_LIMIT) -> pyvips.Image:
    """Every pixel of ``path`` (the primary image of a HEIF, every frame of an animated PNG, the largest
    icon of an ICO); InvalidImage when it is over the limits, corrupt or truncated. Blocking."""
    if fmt == "heic":
        return _heif(path, max_pixels)
    with _pillow(max_pixels, fmt), Image.open(path) as im:
        if im.format != ("PNG" if fmt == "png" else fmt.upper()):
            raise UnsupportedImage(f"content looks like {fmt} but decodes as {im.format}")
        _check_size(*im.size, max_pixels)
        if fmt == "png":
            return _frames(im, max_frames)
        return _to_vips(im)


def _heif(path: Path, max_pixels: int) -> pyvips.Image:
    try:
        heif = pillow_heif.open_heif(path, convert_hdr_to_8bit=True)  # parses boxes only, decodes nothing
        primary = heif[heif.primary_index]
        _check_size(*primary.size, max_pixels)
        width, height = primary.size
        bands = len(primary.mode)
        if primary.mode not in ("RGB", "RGBA") or primary.stride != width * bands:
            return _to_vips(primary.to_pillow())  # (8-bit RGB(A) is what libheif gives here; kept general)
        data = primary.data  # the HEVC decode; libheif applies the rotation and mirror boxes
    except (RuntimeError, ValueError, OSError, EOFError, SyntaxError) as exc:
        raise InvalidImage(f"image data is corrupt or truncated: {_first_line(exc)}") from None
    # libheif's buffer as it is (no Pillow copy): pyvips keeps a reference to it.
    out = pyvips.Image.new_from_memory(data, width, height, bands, "uchar").copy(interpretation="srgb")
    _attach_profile(out, primary.info.get("icc_profile"))
    return out


def _frames(im: Image.Image, max_frames: int) -> pyvips.Image:
    """An APNG's frames (composited by Pillow: disposal and blending applied) as a strip of pages."""
    first = 1 if im.info.get("default_image") else 0  # a default image outside the animation is skipped
    count = getattr(im, "n_frames", 1) - first
    if count > max_frames:
        raise InvalidImage(f"image has {count} frames, over the {max_frames}-frame limit")
    frames, delays = [], []
    try:
        for index in range(first, first + count):
            im.seek(index)
            frames.append(_to_vips(im.convert("RGBA"), icc=False))
            delays.append(int(im.info.get("duration") or 100))
    except (OSError, EOFError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"image data is corrupt or truncated: {_first_line(exc)}") from None
    if len(frames) == 1:
        return frames[0]
    strip = pyvips.Image.arrayjoin(frames, across=1).copy()
    strip.set_type(pyvips.GValue.gint_type, "page-height", frames[0].height)
    strip.set_type(pyvips.GValue.array_int_type, "delay", delays)
    strip.set_type(pyvips.GValue.gint_type, "loop", int(im.info.get("loop", 0)))
    return strip


def _to_vips(im: Image.Image, icc: bool = True) -> pyvips.Image:
    """A Pillow image as 8-bit sRGB-interpreted pyvips pixels, alpha kept, its RGB ICC profile attached."""
    alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
    profile = im.info.get("icc_profile") if icc else None
    try:
        target = "RGBA" if alpha else "RGB"
        rgb = im if im.mode == target else im.convert(target)
        data = rgb.tobytes()
    except (OSError, EOFError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"image data is corrupt or truncated: {_first_line(exc)}") from None
    out = pyvips.Image.new_from_memory(data, rgb.width, rgb.height, 4 if alpha else 3, "uchar")
    out = out.copy(interpretation="srgb")
    _attach_profile(out, profile)
    return out


def _attach_profile(image: pyvips.Image, profile: object) -> None:
    """Tag ``image`` with ``profile`` when it describes RGB data (a grey or CMYK one would not fit the pixels)."""
    if isinstance(profile, bytes) and profile[16:20] == b"RGB ":
        image.set_type(pyvips.GValue.blob_type, "icc-profile-data", profile)


class _pillow:
    """Pillow's decompression-bomb check set to our pixel limit and made an error, for one read."""

    def __init__(self, max_pixels: int, fmt: str) -> None:
        self.max_pixels = max_pixels
        self.fmt = fmt
        self._warnings = warnings.catch_warnings()

    def __enter__(self) -> None:
        self._saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = self.max_pixels
        self._warnings.__enter__()
        warnings.simplefilter("error", Image.DecompressionBombWarning)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self._warnings.__exit__(kind, exc, tb)  # type: ignore[arg-type]
        Image.MAX_IMAGE_PIXELS = self._saved
        if isinstance(exc, (Image.DecompressionBombWarning, Image.DecompressionBombError)):
            raise InvalidImage(f"image is over the {self.max_pixels}-pixel limit") from None
        if isinstance(exc, UnidentifiedImageError):  # its message names the node's temp path
            raise InvalidImage(f"cannot read the image: not a valid {self.fmt} file") from None
        if isinstance(exc, (OSError, EOFError, SyntaxError, ValueError)):
            raise InvalidImage(f"cannot read the image: {_first_line(exc)}") from None


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0 or width * height > max_pixels:
        raise InvalidImage(f"image is {width}x{height}, over the {max_pixels}-pixel limit")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
