"""The processing job that runs inside a sandboxed worker: validate fully, read metadata, fingerprint, and
write the eager variants. Pure libvips and plain values in and out (JSON-able dicts), no I/O beyond the
files it is given, so it is as safe to run in a throwaway process as in a test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyvips

from common.variants import parse_variant
from storage_node.objects.formats import sniff
from storage_node.render import MULTI_PAGE_TYPES, RenderOptions, build_variant
from storage_node.validate import decode_check, dhash, exif_facts, probe


def analyse(job: dict[str, Any]) -> dict[str, Any]:
    """``job``: path, max_pixels, max_frames, keep_gps, render (RenderOptions fields), eager: [[name, dest]].

    Raises UnsupportedImage/InvalidImage (the image is rejected); anything else is a processing failure.
    """
    path = Path(job["path"])
    with path.open("rb") as fobj:
        fmt = sniff(fobj.read(64))
    info = probe(path, fmt, int(job["max_pixels"]), int(job["max_frames"]))
    decode_check(path, info.pages)
    header = pyvips.Image.new_from_file(str(path))
    animated = info.pages > 1 and info.content_type in MULTI_PAGE_TYPES
    opts = RenderOptions(**job.get("render", {}))
    for name, dest in job.get("eager", []):
        build_variant(path, parse_variant(name), Path(dest), opts, animated)
    return {
        "format": fmt,
        "content_type": info.content_type,
        "width": info.width,
        "height": info.height,
        "pages": info.pages,
        "animated": animated,
        "colour_space": str(header.interpretation),
        "icc_profile": bool(header.get_typeof("icc-profile-data")),
        "has_alpha": bool(header.hasalpha()),
        "exif": exif_facts(header, bool(job.get("keep_gps"))),
        "phash": dhash(path),
    }


def variant(job: dict[str, Any]) -> dict[str, Any]:
    """``job``: path, variant (name), dest, animated, render (RenderOptions fields): build one lazy variant."""
    build_variant(
        Path(job["path"]),
        parse_variant(job["variant"]),
        Path(job["dest"]),
        RenderOptions(**job.get("render", {})),
        bool(job.get("animated")),
    )
    return {"dest": job["dest"]}


JOBS = {"analyse": analyse, "variant": variant}
