"""What decodes and encodes images on this node, for `/healthz`: libvips and its bindings, the codecs
it links, and which loaders are allowed. pyvips-binary links its codecs statically and exports none of
their version functions, so their versions are read from the banners compiled into the library."""

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


def codec_versions() -> dict[str, Any]:
    """Blocking on the first call (reads the library once); cached afterwards."""
    return {
        "libvips": ".".join(str(pyvips.version(i)) for i in range(3)),
        "pyvips": _dist_version("pyvips"),
        "pyvips_binary": _dist_version("pyvips-binary"),
        "linked": _linked(),
        "loaders": [name.removeprefix("VipsForeignLoad").lower() for name in ALLOWED_LOADER_CLASSES],
    }
