"""Variant names <-> specs, and choosing the variant for a box; shared by nodes and the query service."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from common.errors import InvalidRequest, NotFound

# Output formats -> (file extension, Content-Type). New kinds/formats slot in here.
FORMATS: dict[str, str] = {"jpg": "image/jpeg", "webp": "image/webp"}
FMT_ALIASES = {"jpeg": "jpg", "jpg": "jpg", "webp": "webp"}
_VARIANT_RE = re.compile(r"^w(?P<w>[1-9][0-9]{0,4})\.(?P<fmt>[a-z]{3,4})$")


@dataclass(frozen=True)
class VariantSpec:
    """One derived image: ``kind`` (``w`` for now), width and output format."""

    kind: str
    width: int
    fmt: str

    @property
    def name(self) -> str:
        return f"w{self.width}.{self.fmt}"

    @property
    def content_type(self) -> str:
        return FORMATS[self.fmt]


def parse_variant(name: str) -> VariantSpec:
    """``w600.webp`` -> VariantSpec; anything else is an unknown variant (404)."""
    m = _VARIANT_RE.match(name)
    if not m or m["fmt"] not in FORMATS:
        raise NotFound("no such variant")
    return VariantSpec("w", int(m["w"]), m["fmt"])


def pick_width(widths: Sequence[int], box_w: float | None, box_h: float | None, dpr: float,
               image_w: int | None, image_h: int | None) -> int:
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
    need_px = math.ceil(need - 1e-9)
    for width in ordered:
        if width >= need_px:
            return width
    return ordered[-1]


def pick_format(fmt: str) -> str:
    """Query-side format choice: ``webp`` when asked for, else ``jpg`` (AVIF/PNG/auto arrive with the pipeline)."""
    if fmt not in ("auto", "jpeg", "jpg", "webp", "avif", "png"):
        raise InvalidRequest("fmt must be one of auto, jpeg, webp, avif, png")
    return "webp" if fmt == "webp" else "jpg"
