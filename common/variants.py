"""Variant names <-> specs, format negotiation, and choosing the variant for a box; shared by nodes and the
query service (pure functions, no I/O).

Names (docs/api.md): ``w{W}.{fmt}`` (width W, height in proportion), ``{W}x{H}.{fmt}`` (exactly W x H, cropped to
fill), ``fit{W}x{H}.{fmt}`` (inside W x H), ``thumb.{fmt}`` (the square made at upload); ``fmt`` is ``jpg``,
``webp``, ``avif``, ``png`` or ``auto`` (resolved per request from ``Accept``). ``full.png`` (every pixel,
upright, as PNG) is not requestable: a node serves it as the ``original`` of a format it never hands out as
itself (TIFF, BMP, ICO).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from common.errors import InvalidRequest, NotFound, SizeNotAllowed

# Output formats -> Content-Type.
FORMATS: dict[str, str] = {"jpg": "image/jpeg", "webp": "image/webp", "avif": "image/avif", "png": "image/png"}
AUTO = "auto"
FMT_ALIASES = {"jpeg": "jpg", "jpg": "jpg", "webp": "webp", "avif": "avif", "png": "png", AUTO: AUTO}
# Formats whose encoders keep every frame of an animation (others get the first frame).
ANIMATED_FORMATS = frozenset({"webp", "avif"})
_SIDE = r"[1-9][0-9]{0,4}"
_VARIANT_RE = re.compile(
    rf"^(?:w(?P<w>{_SIDE})|(?P<cw>{_SIDE})x(?P<ch>{_SIDE})|fit(?P<fw>{_SIDE})x(?P<fh>{_SIDE})|(?P<thumb>thumb))"
    r"\.(?P<fmt>[a-z]{3,4})$"
)


@dataclass(frozen=True)
class VariantSpec:
    """One derived image. ``kind``: ``w`` | ``cover`` | ``fit`` | ``thumb`` | ``full``; ``height`` is 0 for ``w`` and
    ``thumb`` (a thumb's side comes from the node's configuration); ``fmt`` may be ``auto`` in a request."""

    kind: str
    width: int
    fmt: str
    height: int = 0

    @property
    def name(self) -> str:
        if self.kind == "w":
            return f"w{self.width}.{self.fmt}"
        if self.kind == "cover":
            return f"{self.width}x{self.height}.{self.fmt}"
        if self.kind == "fit":
            return f"fit{self.width}x{self.height}.{self.fmt}"
        if self.kind == "full":
            return f"full.{self.fmt}"
        return f"thumb.{self.fmt}"

    @property
    def content_type(self) -> str:
        return FORMATS[self.fmt]

    def with_format(self, fmt: str) -> VariantSpec:
        return replace(self, fmt=fmt)


# The `original` of an input-only format (TIFF, BMP, ICO): every pixel, losslessly, in a format browsers show.
ORIGINAL_RENDITION = VariantSpec("full", 0, "png")


def parse_stored_variant(name: str) -> VariantSpec:
    """``parse_variant``, plus the names only a node makes (``ORIGINAL_RENDITION``)."""
    return ORIGINAL_RENDITION if name == ORIGINAL_RENDITION.name else parse_variant(name)


def parse_variant(name: str) -> VariantSpec:
    """``w600.webp`` -> VariantSpec; anything else is an unknown variant (404)."""
    m = _VARIANT_RE.match(name)
    if not m or (m["fmt"] not in FORMATS and m["fmt"] != AUTO):
        raise NotFound("no such variant")
    fmt = m["fmt"]
    if m["w"]:
        return VariantSpec("w", int(m["w"]), fmt)
    if m["cw"]:
        return VariantSpec("cover", int(m["cw"]), fmt, int(m["ch"]))
    if m["fw"]:
        return VariantSpec("fit", int(m["fw"]), fmt, int(m["fh"]))
    return VariantSpec("thumb", 0, fmt)


def check_size(spec: VariantSpec, widths: Sequence[int], max_side: int, signed: bool = False) -> None:
    """Unsigned requests may only ask for configured sizes (each side); a signed one for any up to ``max_side``.

    Raises SizeNotAllowed (400). ``thumb`` has its configured size and is always allowed.
    """
    sides = [s for s in (spec.width, spec.height) if s]
    if any(s > max_side for s in sides):
        raise SizeNotAllowed(f"variant sides are limited to {max_side} px")
    if not signed and any(s not in widths for s in sides):
        raise SizeNotAllowed(f"sizes must be among {sorted(widths)} (or the URL signed)")


def _accept_q(accept: str) -> dict[str, float]:
    """Media types of an Accept header with their q-values."""
    out: dict[str, float] = {}
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        q = 1.0
        for param in fields[1:]:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        if media:
            out[media] = max(q, out.get(media, 0.0))
    return out


def negotiate(accept: str | None) -> str:
    """``auto`` -> AVIF, then WebP, then JPEG, by what ``Accept`` names explicitly (wildcards do not count:
    ``image/*`` is sent by clients that cannot decode AVIF)."""
    q = _accept_q(accept or "")
    for fmt in ("avif", "webp"):
        if q.get(FORMATS[fmt], 0.0) > 0:
            return fmt
    return "jpg"


def resolve_format(spec: VariantSpec, accept: str | None) -> tuple[VariantSpec, bool]:
    """The concrete spec to serve, and whether the choice depended on ``Accept`` (so ``Vary: Accept``)."""
    if spec.fmt != AUTO:
        return spec, False
    return spec.with_format(negotiate(accept)), True


def pick_width(
    widths: Sequence[int],
    box_w: float | None,
    box_h: float | None,
    dpr: float,
    image_w: int | None,
    image_h: int | None,
) -> int:
    """Smallest configured width covering the box at ``dpr``; the largest when none does.

    A height-only box is turned into a width with the image's aspect ratio when known.
    """
    ordered = sorted(widths)
    need: float | None = None
    if box_w is not None:
        need = box_w * dpr
    if box_h is not None and image_w and image_h:
        from_h = box_h * dpr * image_w / image_h
        need = from_h if need is None else min(need, from_h)
    if need is None:
        return ordered[-1]
    return _cover(ordered, need)


def _cover(ordered: Sequence[int], need: float) -> int:
    need_px = math.ceil(need - 1e-9)
    for width in ordered:
        if width >= need_px:
            return width
    return ordered[-1]


def pick_format(fmt: str, accept: str | None = None) -> str:
    """Query-side format: an explicit one as asked; ``auto`` resolved from the client's ``Accept`` when it
    names image types (a browser following ``/img``), else left ``auto`` for the node to negotiate."""
    if fmt not in FMT_ALIASES:
        raise InvalidRequest("fmt must be one of auto, jpeg, webp, avif, png")
    fmt = FMT_ALIASES[fmt]
    if fmt == AUTO and accept and "image/" in accept.lower():
        return negotiate(accept)
    return fmt


def pick_variant(
    widths: Sequence[int],
    *,
    w: float | None,
    h: float | None,
    dpr: float,
    fit: str,
    fmt: str,
    accept: str | None,
    image_w: int | None,
    image_h: int | None,
) -> str:
    """The variant name for a box (seed: "the server retrieves the most appropriate image").

    ``fit=inside`` (default): ``w{W}`` with W the smallest configured width covering the box at ``dpr``.
    ``fit=cover`` with both sides: ``{W}x{H}`` with each side the smallest configured size covering it,
    so the URL stays unsigned and cacheable (the client's ``object-fit: cover`` trims the difference).
    Never wider than the image itself needs: the node does not upscale, so the smallest configured
    width at or above the image's width serves the same pixels.
    """
    out_fmt = pick_format(fmt, accept)
    ordered = sorted(widths)
    if fit == "cover" and w is not None and h is not None:
        cw, ch = _cover(ordered, w * dpr), _cover(ordered, h * dpr)
        return f"{cw}x{ch}.{out_fmt}"
    width = pick_width(ordered, w, h, dpr, image_w, image_h)
    if image_w:
        width = min(width, _cover(ordered, image_w))
    return f"w{width}.{out_fmt}"
