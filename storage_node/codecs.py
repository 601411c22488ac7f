"""What decodes and encodes images on this node, for `/healthz`: libvips and its bindings, the codecs
it links, which loaders are allowed, and the decoders the sandbox runs beside libvips (Pillow for BMP, ICO
and animated PNG; pillow-heif's libheif with libde265 for HEIC). pyvips-binary links its codecs statically
and exports none of their version functions, so their versions are read from the banners compiled into
the library; the other decoders' versions come from their package metadata and library file names (read
here without importing them: they run only in sandboxed workers)."""

from __future__ import annotations

import functools
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import pyvips

from storage_node.validate import ALLOWED_LOADER_CLASSES

# Banners compiled into the codec libraries (name -> pattern whose group 1 is the version).
_BANNERS = {
    "mozjpeg": rb"mozjpeg version ([0-9][0-9.]*)",
    "libjpeg-turbo": rb"libjpeg-turbo version ([0-9][0-9.]*)",
    "libpng": rb"libpng version ([0-9][0-9.]*)",
    "libspng": rb"spng[ /-]v?([0-9]+\.[0-9]+\.[0-9]+)",
    "libheif": rb"libheif[ /-]v?([0-9]+\.[0-9]+\.[0-9]+)",
    "dav1d": rb"dav1d[ /-]v?([0-9]+\.[0-9]+\.[0-9]+)",
}


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def _linked() -> dict[str, str]:
    """Codec versions found in the libvips shared library shipped by pyvips-binary (read once)."""
    found: dict[str, str] = {}
    try:
        files = metadata.files("pyvips-binary") or []
    except metadata.PackageNotFoundError:
        return found
    for entry in files:
        if "libvips" in entry.name and ".so" in entry.name:
            data = Path(str(entry.locate())).read_bytes()
            for codec, pattern in _BANNERS.items():
                m = re.search(pattern, data)
                if m:
                    found[codec] = m.group(1).decode()
    return found


@functools.cache
def _sandbox_decoders() -> dict[str, str | None]:
    """Pillow and pillow-heif versions, and the libheif bundled in pillow-heif's wheel (by its file name)."""
    found: dict[str, str | None] = {"pillow": _dist_version("pillow"), "pillow_heif": _dist_version("pillow-heif")}
    try:
        files = metadata.files("pillow-heif") or []
    except metadata.PackageNotFoundError:
        return found
    for entry in files:
        m = re.fullmatch(r"libheif[-.].*\.so\.([0-9]+\.[0-9]+\.[0-9]+)", entry.name)
        if m:
            found["libheif"] = m.group(1)
    return found


def codec_versions() -> dict[str, Any]:
    """Blocking on the first call (reads the library once); cached afterwards."""
    return {
        "libvips": ".".join(str(pyvips.version(i)) for i in range(3)),
        "pyvips": _dist_version("pyvips"),
        "pyvips_binary": _dist_version("pyvips-binary"),
        "linked": _linked(),
        "loaders": [name.removeprefix("VipsForeignLoad").lower() for name in ALLOWED_LOADER_CLASSES],
        "decoders": _sandbox_decoders(),
    }
