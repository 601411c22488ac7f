"""The processing job that runs inside a sandboxed worker: validate fully, read metadata, fingerprint, and
write the eager variants. Pure libvips (and ``storage_node.decoders`` for what libvips cannot decode) and
plain values in and out (JSON-able dicts), no I/O beyond the files it is given, so it is as safe to run in
a throwaway process as in a test.

A job that carries the original's record (``sha256``, ``bytes``; the node always sends it) decodes a
verified private copy of the file (``storage_node.objects.verify.verified_copy``), never the file itself:
a damaged original raises OriginalMismatch before any decoder sees it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyvips

from common.variants import parse_stored_variant
from storage_node.decoders import LIBVIPS_ANIMATED, PILLOW_PROBED, open_source, probe_foreign
from storage_node.objects.formats import sniff
from storage_node.objects.verify import verified_copy
from storage_node.render import MULTI_PAGE_TYPES, RenderOptions, build_variant, build_variants
from storage_node.validate import checked_dhash, decode_check, dhash, dhash_image, exif_facts


@contextlib.contextmanager
def _source(job: dict[str, Any]) -> Iterator[Path]:
    """The file a job decodes: the verified copy when the job carries the record, else ``path`` itself."""
    if "sha256" not in job:
        yield Path(job["path"])
        return
    with verified_copy(Path(job["path"]), str(job["sha256"]), int(job["bytes"])) as path:
        yield path


def analyse(job: dict[str, Any]) -> dict[str, Any]:
    """``job``: path, sha256 and bytes (the record), max_pixels, max_frames, keep_gps, render (RenderOptions
    fields), eager: [[name, dest]].

    Raises UnsupportedImage/InvalidImage (the image is rejected), OriginalMismatch (the stored bytes are
    not the recorded ones); anything else is a processing failure.
    """
    started = time.process_time()
    with _source(job) as path:
        result = _analyse(path, job)
    result["cpu_s"]["job"] = time.process_time() - started  # the whole job, the record's check of the copy too
    return result


def _analyse(path: Path, job: dict[str, Any]) -> dict[str, Any]:
    """The result carries ``cpu_s``: this process's CPU seconds by step, for the node's stage budget."""
    cpu_s: dict[str, float] = {}
    max_pixels, max_frames = int(job["max_pixels"]), int(job["max_frames"])
    with path.open("rb") as fobj:
        fmt = sniff(fobj.read(64))
    info = probe_foreign(path, fmt, max_pixels, max_frames)
    source = open_source(path, max_pixels, max_frames)  # decodes HEIC, BMP, ICO and animated PNG fully
    phash: int | None = None
    if source.decoded is None:
        started = time.process_time()
        # Every frame of an animation; a TIFF's first page only (its other pages are never shown).
        pages = info.pages if fmt in LIBVIPS_ANIMATED or fmt == "avif" else 1
        if pages == 1:
            phash = checked_dhash(path)  # the decode check and the fingerprint in one pass
        else:
            decode_check(path, pages)
        cpu_s["decode check"] = time.process_time() - started
    # Metadata from libvips's header where it reads one (EXIF of a HEIC too), else from the decoded pixels.
    if source.decoded is not None and fmt in PILLOW_PROBED:
        header = source.decoded
    else:
        header = pyvips.Image.new_from_file(str(path))
    pixels = source.decoded if source.decoded is not None else header
    animated = info.pages > 1 and info.content_type in MULTI_PAGE_TYPES
    opts = RenderOptions(**job.get("render", {}))
    eager = [(parse_stored_variant(name), Path(dest)) for name, dest in job.get("eager", [])]
    build_variants(path, eager, opts, animated, source.decoded, cpu_s)
    return {
        "format": fmt,
        "content_type": info.content_type,
        "width": info.width,
        "height": info.height,
        "pages": info.pages,
        "animated": animated,
        "colour_space": str(header.interpretation),
        "icc_profile": bool(pixels.get_typeof("icc-profile-data")),
        "has_alpha": bool(pixels.hasalpha()),
        "exif": exif_facts(header, bool(job.get("keep_gps"))),
        "phash": phash if phash is not None else dhash(path) if source.decoded is None else dhash_image(source.decoded),
        "cpu_s": cpu_s,
    }


def probe(job: dict[str, Any]) -> dict[str, Any]:
    """``job``: path, max_pixels, max_frames: the header probe of a format only Pillow reads (BMP, ICO)."""
    path = Path(job["path"])
    with path.open("rb") as fobj:
        fmt = sniff(fobj.read(64))
    return asdict(probe_foreign(path, fmt, int(job["max_pixels"]), int(job["max_frames"])))


def variant(job: dict[str, Any]) -> dict[str, Any]:
    """``job``: path, sha256 and bytes (the record), variant (name), dest, animated, render (RenderOptions
    fields): build one lazy variant. Raises OriginalMismatch when the original is not the recorded bytes."""
    with _source(job) as path:
        source = open_source(path)
        build_variant(
            source.path,
            parse_stored_variant(job["variant"]),
            Path(job["dest"]),
            RenderOptions(**job.get("render", {})),
            bool(job.get("animated")) and source.multi_page,  # the node's hint is by content type (any PNG)
            source.decoded,
        )
    return {"dest": job["dest"]}


JOBS = {"analyse": analyse, "probe": probe, "variant": variant}
