"""Variant builds with libvips: every kind and format, and the node's bounded, single-flight build pool.

``build_variant`` (``build_variants`` for several: those that differ by format share one decode and crop) is
the one place pixels are made (in sandboxed worker processes, for eager and lazy variants alike). It uses
``thumbnail`` (shrink-on-load, so memory follows the output size rather than the source's; a source decoded
outside libvips, see ``storage_node.decoders``, is in memory already and shrunk with ``thumbnail_image``),
auto-orients from EXIF, never upscales, converts to sRGB through the embedded ICC profile (CMYK with or
without one), strips every metadata field from the output, keeps alpha for png/webp/avif and flattens it on
white for jpg, and keeps animations animated for webp/avif.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyvips

from common.config import PipelineSettings
from common.errors import InvalidImage, MinicdnError, NotFound, UnsupportedImage
from common.variants import ANIMATED_FORMATS, VariantSpec
from storage_node.objects.store import ORIGINAL, ObjectMeta, Store
from storage_node.sandbox import SandboxPool
from storage_node.validate import displayed_size, first_frame, header_field

if TYPE_CHECKING:
    from common.metrics import NodeMetrics

HUGE = 10_000_000  # "no bound" for the other side of a thumbnail box
# What can be animated on input: GIF and WebP (libvips reads their frames), PNG (an APNG's frames are
# decoded by storage_node.decoders; a still PNG is one frame).
MULTI_PAGE_TYPES = frozenset({"image/gif", "image/webp", "image/png"})


@dataclass(frozen=True)
class RenderOptions:
    thumb_size: int = 150
    jpeg_quality: int = 82
    webp_quality: int = 80
    avif_quality: int = 55
    avif_effort: int = 2
    png_compression: int = 6

    @classmethod
    def from_settings(cls, pipe: PipelineSettings) -> RenderOptions:
        return cls(
            pipe.thumb_size,
            pipe.jpeg_quality,
            pipe.webp_quality,
            pipe.avif_quality,
            pipe.avif_effort,
            pipe.png_compression,
        )


def _target(spec: VariantSpec, opts: RenderOptions) -> tuple[int, int, bool]:
    """(width, height, crop) of the thumbnail box for a spec."""
    if spec.kind == "w":
        return spec.width, HUGE, False
    if spec.kind == "fit":
        return spec.width, spec.height, False
    if spec.kind == "cover":
        return spec.width, spec.height, True
    if spec.kind == "full":
        return HUGE, HUGE, False
    return opts.thumb_size, opts.thumb_size, True


def _shrink_box(width: int, height: int, avail_w: int, avail_h: int) -> tuple[int, int]:
    """A cover box no larger than the pixels available, keeping its aspect ratio (never upscale)."""
    scale = min(1.0, avail_w / width, avail_h / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _load(src: Path, spec: VariantSpec, opts: RenderOptions, animated: bool) -> pyvips.Image:
    width, height, crop = _target(spec, opts)
    if animated and crop:
        return _cover_animation(src, width, height)
    name = f"{src}[n=-1]" if animated else str(src)
    # size="down": never upscale. A cover crop of a small image keeps the box's aspect ratio instead.
    if crop:
        shown = displayed_size(pyvips.Image.new_from_file(str(src), access="sequential"))
        width, height = _shrink_box(width, height, *shown)
        if not _fits_exactly(shown, width, height):  # (else the crop cuts nothing: no attention search to pay)
            return pyvips.Image.thumbnail(name, width, height=height, crop="attention", size="down", fail_on="error")
    return pyvips.Image.thumbnail(name, width, height=height, size="down", fail_on="error")


def _fits_exactly(size: tuple[int, int], width: int, height: int) -> bool:
    """Whether an image of ``size`` shrunk to fit the box is the whole box (same aspect ratio, to the pixel)."""
    scale = min(width / size[0], height / size[1])
    return (round(size[0] * scale), round(size[1] * scale)) == (width, height)


def _shrink_decoded(image: pyvips.Image, spec: VariantSpec, opts: RenderOptions, animated: bool) -> pyvips.Image:
    """The same boxes as ``_load``, for an image decoded in memory (each frame of an animation alike)."""
    width, height, crop = _target(spec, opts)
    page_h = header_field(image, "page-height", image.height)
    pages = image.height // page_h if animated else 1
    frames = [image.crop(0, i * page_h, image.width, page_h) for i in range(pages)]
    how = {}
    if crop:
        width, height = _shrink_box(width, height, image.width, page_h)
        how = {"crop": "centre" if animated else "attention"}  # attention would make frames jump
    out = [pyvips.Image.thumbnail_image(frame, width, height=height, size="down", **how) for frame in frames]
    if pages == 1:
        return out[0]
    strip = pyvips.Image.arrayjoin(out, across=1).copy()
    strip.set_type(pyvips.GValue.gint_type, "page-height", out[0].height)
    for field in ("delay", "loop"):
        if image.get_typeof(field):
            strip.set_type(image.get_typeof(field), field, image.get(field))
    return strip


def _cover_animation(src: Path, width: int, height: int) -> pyvips.Image:
    """Cover-crop every frame of an animation the same way (centre; attention would make frames jump)."""
    first = pyvips.Image.new_from_file(str(src))
    frame_w, frame_h = first.width, header_field(first, "page-height", first.height)
    width, height = _shrink_box(width, height, frame_w, frame_h)
    scale = max(width / frame_w, height / frame_h)
    strip = pyvips.Image.thumbnail(
        f"{src}[n=-1]", max(1, round(frame_w * scale)), height=HUGE, size="down", fail_on="error"
    )
    page_h = header_field(strip, "page-height", strip.height)
    pages = max(1, strip.height // page_h)
    width, height = min(width, strip.width), min(height, page_h)
    left, top = (strip.width - width) // 2, (page_h - height) // 2
    frames = [strip.crop(left, i * page_h + top, width, height) for i in range(pages)]
    if pages == 1:
        return frames[0]
    out = pyvips.Image.arrayjoin(frames, across=1).copy()
    out.set_type(pyvips.GValue.gint_type, "page-height", height)
    return out


def _to_srgb(image: pyvips.Image) -> pyvips.Image:
    # Colour-manage only images that carry a profile (on the small, already shrunk image): an untagged
    # image is sRGB by definition, and a transform on it would cost ~40% of a build for nothing.
    if image.get_typeof("icc-profile-data"):
        image = image.icc_transform("srgb", embedded=True, intent="perceptual")
    if image.interpretation != "srgb":
        image = image.colourspace("srgb")  # CMYK without a profile, grey, 16-bit, labs...
    if image.format != "uchar":
        image = image.cast("uchar")
    return image


def build_variant(
    src: Path,
    spec: VariantSpec,
    dest: Path,
    opts: RenderOptions,
    animated: bool = False,
    decoded: pyvips.Image | None = None,
) -> None:
    """Blocking: write the variant ``spec`` of the image at ``src`` (or of its ``decoded`` pixels) to ``dest``."""
    build_variants(src, [(spec, dest)], opts, animated, decoded)


def build_variants(
    src: Path,
    wanted: list[tuple[VariantSpec, Path]],
    opts: RenderOptions,
    animated: bool = False,
    decoded: pyvips.Image | None = None,
    cpu_s: dict[str, float] | None = None,
) -> None:
    """Blocking: ``build_variant`` of each (spec, dest), the pixels of variants that differ by format only (an
    upload's eager ``thumb.jpg`` and ``thumb.webp``) made once: one decode and one crop, encoded in each format.
    ``cpu_s``: where to add this process's CPU seconds per step (``pixels <kind>``, ``encode <fmt>``)."""
    groups: dict[tuple[str, int, int, bool], list[tuple[VariantSpec, Path]]] = {}
    for spec, dest in wanted:
        keep_frames = animated and spec.fmt in ANIMATED_FORMATS
        groups.setdefault((spec.kind, spec.width, spec.height, keep_frames), []).append((spec, dest))
    clock = time.process_time
    for (kind, _w, _h, keep_frames), members in groups.items():
        started = clock()
        image = _pixels(src, members[0][0], opts, keep_frames, decoded)
        if len(members) > 1:
            image = image.copy_memory()  # else each encode would run the whole pipeline (decode included) again
        _add(cpu_s, f"pixels {kind}", clock() - started)
        for spec, dest in members:
            started = clock()
            _encode(image, spec.fmt, dest, opts)  # (a single member's decode happens here, lazily)
            _add(cpu_s, f"encode {spec.fmt}", clock() - started)


def _add(into: dict[str, float] | None, key: str, seconds: float) -> None:
    if into is not None:
        into[key] = into.get(key, 0.0) + seconds


def _pixels(
    src: Path, spec: VariantSpec, opts: RenderOptions, keep_frames: bool, decoded: pyvips.Image | None
) -> pyvips.Image:
    if decoded is not None:
        image = _to_srgb(_shrink_decoded(decoded, spec, opts, keep_frames))
    else:
        image = _to_srgb(_load(src, spec, opts, keep_frames))
    return image if keep_frames else first_frame(image)


def _encode(image: pyvips.Image, fmt: str, dest: Path, opts: RenderOptions) -> None:
    if fmt == "jpg":
        if image.hasalpha():
            image = image.flatten(background=[255, 255, 255])
        image.jpegsave(str(dest), Q=opts.jpeg_quality, keep="none", optimize_coding=True, interlace=True)
    elif fmt == "webp":
        image.webpsave(str(dest), Q=opts.webp_quality, keep="none", effort=4)
    elif fmt == "avif":
        image.heifsave(str(dest), Q=opts.avif_quality, compression="av1", effort=opts.avif_effort, keep="none")
    elif fmt == "png":
        image.pngsave(str(dest), compression=opts.png_compression, keep="none")
    else:
        raise ValueError(f"no encoder for {fmt!r}")


def configure_process() -> None:
    """Process-wide settings for a node that builds variants: no libvips operation cache (every build reads
    a different source, so the cache would only keep pixel buffers alive) and at most two glibc malloc
    arenas (each render thread would otherwise keep its own arena of freed pixel buffers resident)."""
    pyvips.cache_set_max(0)
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX


class Renderer:
    """Lazy variants, one build per (image, variant) however many requests ask (single-flight), each built in
    a sandboxed worker process (``storage_node.sandbox``): a source that passed the full decode check can
    still meet a codec bug in a resize or encoder path, and that must cost one request, not the node.
    Every build decodes a copy of the original verified against its record (the worker hashes what it
    decodes): a damaged original raises OriginalMismatch, for the caller to answer without a 500."""

    def __init__(
        self,
        store: Store,
        workers: int,
        opts: RenderOptions | None = None,
        metrics: NodeMetrics | None = None,
        *,
        memory_mb: int = 1536,
        timeout_s: float = 60.0,
    ) -> None:
        self.store = store
        self.opts = opts or RenderOptions()
        self.metrics = metrics
        # Two libvips threads per worker: a build's decode, resize and encode overlap (lower latency), and
        # with one worker per core the cores stay busy under load.
        self.sandbox = SandboxPool(workers or os.cpu_count() or 2, memory_mb, timeout_s, vips_threads=2)
        self._inflight: dict[tuple[str, str], asyncio.Future[Path]] = {}
        self.builds = 0

    async def ensure(
        self, image_id: str, spec: VariantSpec, content_type: str = "", meta: ObjectMeta | None = None
    ) -> Path:
        """The variant's path, building it first if it is not on disk yet (single-flight). ``meta``: the
        original's record (looked up in the store when not given)."""
        dest = self.store.path_for(image_id, spec.name)
        if self.store.has_variant(image_id, spec.name):
            self._count("hit")
            return dest
        key = (image_id, spec.name)
        running = self._inflight.get(key)
        if running is not None:
            self._count("miss")  # waits for the build already running
            return await asyncio.shield(running)
        future: asyncio.Future[Path] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            if await asyncio.to_thread(dest.exists):
                self._count("hit")
                path = dest
            else:
                self._count("miss")
                path = await self._build(image_id, spec, content_type in MULTI_PAGE_TYPES, meta)
            self.store.note_variant(image_id, spec.name)
            future.set_result(path)
            return path
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters (if any) re-raise it
            raise
        finally:
            del self._inflight[key]

    async def _build(self, image_id: str, spec: VariantSpec, animated: bool, meta: ObjectMeta | None) -> Path:
        meta = meta or self.store.cached_meta(image_id) or await asyncio.to_thread(self.store.meta, image_id)
        if meta is None:
            raise NotFound("no such image on this node")
        tmp = self.store.new_tmp_path().with_suffix("." + spec.fmt)
        self.store.note_read(image_id, ORIGINAL)  # a build reads the original: it counts as a use
        try:
            started = time.perf_counter()
            for attempt in (1, 2):
                source = self.store.original_path(image_id)  # hot or cold
                job = {"op": "variant", "path": str(source), "variant": spec.name, "dest": str(tmp)}
                record = {"sha256": meta.sha256, "bytes": meta.bytes}  # the worker decodes only these bytes
                try:
                    await self.sandbox.run({**job, **record, "animated": animated, "render": asdict(self.opts)})
                    break
                except (InvalidImage, UnsupportedImage) as exc:
                    if attempt == 1 and not await asyncio.to_thread(source.exists):
                        continue  # the original switched tiers while the job waited for a worker: once more
                    raise MinicdnError(
                        f"variant {spec.name} could not be built: {exc.message}", code="render_failed"
                    ) from None
            self.builds += 1
            if self.metrics is not None:
                self.metrics.variant_build_duration.labels(spec.fmt).observe(time.perf_counter() - started)
                self.metrics.variant_builds.labels(spec.fmt).inc()
            return await asyncio.to_thread(self.store.commit, tmp, image_id, spec.name)
        finally:
            await asyncio.to_thread(self.store.discard_tmp, tmp)

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.variant_cache.labels(result).inc()

    async def close(self) -> None:
        await self.sandbox.close()
