"""GET|HEAD /i/{image_id}/{variant}: originals and variants from disk via sendfile, with explicit headers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from common.ids import check_image_id
from common.variants import VariantSpec, check_size, parse_variant, resolve_format
from storage_node import keys, misses
from storage_node.store import ORIGINAL, ObjectMeta

CACHE_PUBLIC = "public, max-age=31536000, immutable"
RENDER_VERSION = "r2"  # bump when variant output changes, so ETags change with it


class ImmutableFileResponse(web.FileResponse):
    """FileResponse whose ETag is ours (content hash, equal on every replica), not mtime-size, and which
    sends no Last-Modified (mtimes differ between replicas)."""

    def __init__(self, path: Path, etag: str, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._fixed_etag = etag
        self.etag = etag

    @property  # type: ignore[override]
    def etag(self) -> Any:
        return super().etag

    @etag.setter
    def etag(self, value: Any) -> None:
        web.StreamResponse.etag.fset(self, self._fixed_etag)  # type: ignore[attr-defined]

    @property  # type: ignore[override]
    def last_modified(self) -> Any:
        return None

    @last_modified.setter
    def last_modified(self, value: Any) -> None:
        pass


def _etag_for(meta: ObjectMeta, variant: str) -> str:
    if variant == ORIGINAL:
        return meta.sha256[:32]
    return f"{meta.sha256[:24]}-{variant}-{RENDER_VERSION}"


def _not_modified(request: web.Request, etag: str) -> bool:
    return any(tag.value in (etag, "*") for tag in request.if_none_match or ())


async def get_image(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings, store = app[keys.SETTINGS], app[keys.STORE]
    image_id = check_image_id(request.match_info["image_id"])
    name = request.match_info["variant"]
    spec: VariantSpec | None = None
    vary = False
    if name != ORIGINAL:
        spec = parse_variant(name)
        check_size(spec, settings.limits.widths, settings.limits.max_variant_side)
        spec, vary = resolve_format(spec, request.headers.get("Accept"))
        name = spec.name
    meta = store.cached_meta(image_id) or await asyncio.to_thread(store.meta, image_id)
    if meta is None:
        return await misses.redirect_to_holder(request, image_id)  # 307 to a holder + read repair, or 404
    await app[keys.GATE].check(image_id)  # only `ready` images (memory-only once known ready)
    etag = _etag_for(meta, name)
    headers = {"Cache-Control": CACHE_PUBLIC, "X-Content-Type-Options": "nosniff"}
    if vary:
        headers["Vary"] = "Accept"
    if _not_modified(request, etag):
        headers["ETag"] = f'"{etag}"'
        return web.Response(status=304, headers=headers)
    if spec is None:
        path, content_type = store.path_for(image_id, ORIGINAL), meta.content_type
    else:
        path, content_type = await app[keys.RENDERER].ensure(image_id, spec, meta.content_type), spec.content_type
    headers["Content-Type"] = content_type
    return ImmutableFileResponse(path, etag, headers=headers)
