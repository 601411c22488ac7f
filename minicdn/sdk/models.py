"""Typed views of the API's JSON: `Image` (the image object of `GET /v1/images/{id}`), its `Replica`s,
`Srcset` and a search `Page`. Unknown fields are kept in `raw`, so a newer server never breaks an older SDK."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

PENDING_STATUSES = frozenset({"requested", "uploaded", "processing"})


def _when(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


@dataclass(frozen=True)
class Replica:
    node_id: str
    region: str
    state: str  # ok | pending | missing | corrupt
    verified_at: datetime | None = None


@dataclass(frozen=True)
class Image:
    """An image as the query service describes it. `width`/`height` are as displayed (EXIF orientation
    applied); `format`, sizes and `sha256` are known once uploaded, the rest once processed."""

    id: str
    status: str  # requested | uploaded | processing | ready | rejected | quarantined | deleted
    reason: str | None = None
    visibility: str = "public"
    format: str | None = None
    width: int | None = None
    height: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    created_at: datetime | None = None
    uploaded_at: datetime | None = None
    ready_at: datetime | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    duplicate_of: str | None = None
    replicas: tuple[Replica, ...] = ()
    pages: int | None = None
    animated: bool | None = None
    colour_space: str | None = None
    exif: dict[str, Any] | None = None
    had_gps: bool | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def settled(self) -> bool:
        """True once processing has decided (ready, rejected, quarantined or deleted)."""
        return self.status not in PENDING_STATUSES

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Image:
        replicas = tuple(
            Replica(str(r["node_id"]), str(r.get("region", "")), str(r.get("state", "")), _when(r.get("verified_at")))
            for r in data.get("replicas") or ()
        )
        return cls(
            id=str(data["image_id"]),
            status=str(data.get("status", "")),
            reason=data.get("reason"),
            visibility=str(data.get("visibility") or "public"),
            format=data.get("format"),
            width=_int(data.get("width")),
            height=_int(data.get("height")),
            bytes=_int(data.get("bytes")),
            sha256=data.get("sha256"),
            created_at=_when(data.get("created_at")),
            uploaded_at=_when(data.get("uploaded_at")),
            ready_at=_when(data.get("ready_at")),
            tags=tuple(data.get("tags") or ()),
            metadata=dict(data.get("metadata") or {}),
            duplicate_of=data.get("duplicate_of"),
            replicas=replicas,
            pages=_int(data.get("pages")),
            animated=data.get("animated"),
            colour_space=data.get("colour_space"),
            exif=data.get("exif"),
            had_gps=data.get("had_gps"),
            raw=dict(data),
        )


@dataclass(frozen=True)
class Srcset:
    """`srcset` for an `<img srcset>` (one URL per width, each on the nearest healthy node), `src` the fallback."""

    srcset: str
    src: str
    widths: tuple[int, ...]

    def img_tag(self, alt: str = "", sizes: str = "100vw") -> str:
        """A ready `<img>` element (attribute values HTML-escaped)."""
        from html import escape

        return (
            f'<img src="{escape(self.src)}" srcset="{escape(self.srcset)}" sizes="{escape(sizes)}" alt="{escape(alt)}">'
        )


@dataclass(frozen=True)
class Page:
    """One page of search results; pass `next_cursor` back to get the next (None: this was the last)."""

    images: tuple[Image, ...]
    next_cursor: str | None
