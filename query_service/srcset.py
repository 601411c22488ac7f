"""`GET /v1/images/{id}/srcset`: which widths a srcset lists and which variant serves each (pure: no I/O).

A `w` descriptor must be the width of the file it names, or the browser picks wrongly. Nodes make only
the configured widths (`limits.widths`) without a signature, so each asked width is served by the
variant `/url` would pick for a box that wide (the smallest configured width covering it), and is
listed under the width that variant really has: the configured width, or the image's own width when
that is smaller (nodes never upscale). Widths larger than the image are left out; asked widths that land
on the same variant give one entry. An image narrower than every asked width gets one entry, itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from common.errors import InvalidRequest
from common.variants import parse_variant, pick_variant
from query_service.requests import check_ip

MAX_WIDTHS = 20
MAX_WIDTH = 16384


@dataclass(frozen=True)
class SrcsetQuery:
    widths: tuple[int, ...]  # ascending, distinct
    fmt: str
    fit: str
    client_ip: str | None


@dataclass(frozen=True)
class Entry:
    width: int  # the `w` descriptor: the served file's real width
    variant: str


def parse_srcset_query(query: Mapping[str, str], default_widths: Sequence[int]) -> SrcsetQuery:
    text = query.get("widths")
    if text is None or text == "":
        widths = tuple(default_widths)
    else:
        try:
            widths = tuple(int(part) for part in text.split(","))
        except ValueError:
            raise InvalidRequest("widths must be a comma-separated list of integers") from None
        if len(widths) > MAX_WIDTHS:
            raise InvalidRequest(f"widths takes at most {MAX_WIDTHS} values")
        if any(not 1 <= w <= MAX_WIDTH for w in widths):
            raise InvalidRequest(f"widths must each be within 1..{MAX_WIDTH}")
    fit = query.get("fit", "inside")
    if fit not in ("inside", "cover"):
        raise InvalidRequest("fit must be `inside` or `cover`")
    fmt = query.get("fmt", "auto")
    if fmt not in ("auto", "jpeg", "jpg", "webp", "avif", "png"):
        raise InvalidRequest("fmt must be one of auto, jpeg, webp, avif, png")
    client_ip = query.get("client_ip")
    return SrcsetQuery(
        widths=tuple(sorted(set(widths))),
        fmt=fmt,
        fit=fit,
        client_ip=check_ip(client_ip) if client_ip else None,
    )


def plan(
    q: SrcsetQuery,
    configured: Sequence[int],
    image_w: int | None,
    image_h: int | None,
    accept: str | None,
) -> list[Entry]:
    """The srcset's entries, narrowest first (never empty)."""

    def variant_for(box_w: float | None) -> str:
        # Width-only boxes: `fit=cover` needs both sides, so it picks what `inside` picks (as /url does).
        return pick_variant(
            configured, w=box_w, h=None, dpr=1.0, fit=q.fit, fmt=q.fmt, accept=accept, image_w=image_w, image_h=image_h
        )

    def served_width(variant: str) -> int:
        width = parse_variant(variant).width
        return min(width, image_w) if image_w else width

    fitting = [w for w in q.widths if image_w is None or w <= image_w]
    variants = [variant_for(w) for w in fitting] or [variant_for(None)]  # none fits: the image itself
    entries: dict[str, Entry] = {}
    for variant in variants:
        entries.setdefault(variant, Entry(served_width(variant), variant))
    return sorted(entries.values(), key=lambda e: e.width)
