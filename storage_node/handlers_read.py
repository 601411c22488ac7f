"""GET|HEAD /i/{image_id}/{variant}: originals and variants from disk via sendfile, with explicit headers.

Private images and every original need a signed URL (scope `download`, bound to the image and the
variant path). Responses carry a strong ETag from the content hash, a Content-Type from the detected
format (never from the client), nosniff and a restrictive CSP; a single byte range gets 206, an
unsatisfiable one 416, and several ranges get the whole file (no range amplification).

Integrity: an original is sent from a descriptor checked against its record first (its size always, its
hash when its bytes changed since last verified: ``storage_node.objects.verify``), and a variant is built
only from verified bytes. A copy that fails is never answered with 200: it is reported
(``storage_node.integrity``) and the request gets a 307 to a holder with a good copy (or 503).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import ETag

from common import signing
from common.errors import NotFound, RangeNotSatisfiable, SignatureInvalid
from common.hardening import IMAGE_CSP
from common.ids import check_image_id
from common.variants import ORIGINAL_RENDITION, VariantSpec, check_size, parse_variant, resolve_format
from storage_node import fallback, keys, misses
from storage_node.objects.formats import INPUT_ONLY
from storage_node.objects.store import ORIGINAL, ObjectMeta, Store
from storage_node.objects.verify import OriginalMismatch, check_open
from storage_node.tierfile import FallbackFileResponse, OpenedFile, open_first

CACHE_PUBLIC = "public, max-age=31536000, immutable"
CACHE_PRIVATE = "private, max-age=3600"
RENDER_VERSION = "r2"  # bump when variant output changes, so ETags change with it
SIGNATURE_PARAMS = ("exp", "kid", "sig")
_SINGLE_RANGE_RE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})", re.ASCII | re.IGNORECASE)


class ImmutableFileResponse(FallbackFileResponse):
    """FileResponse whose ETag is ours (content hash, equal on every replica), not mtime-size, and which
    sends no Last-Modified (mtimes differ between replicas). Given several paths (an original's tiers),
    it serves the first that exists."""

    def __init__(
        self, path: Path | Sequence[Path] | OpenedFile, etag: str, *, ignore_range: bool = False, **kwargs: Any
    ) -> None:
        super().__init__([path] if isinstance(path, Path) else path, **kwargs)
        self._fixed_etag = etag
        self._ignore_range = ignore_range
        self.etag = etag

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self._ignore_range:  # answer with the whole file (200), as if no Range had been sent
            headers = request.headers.copy()
            headers.popall("Range", None)
            request = request.clone(headers=headers)
        return await super().prepare(request)

    @property
    def etag(self) -> ETag | None:
        return super().etag

    @etag.setter
    def etag(self, value: ETag | str | None) -> None:
        # Whatever FileResponse computes, the parent's setter stores ours.
        parent_setter = web.StreamResponse.etag.fset  # type: ignore[attr-defined]  # mypy: overload, not property
        parent_setter(self, self._fixed_etag)

    @property
    def last_modified(self) -> datetime | None:
        return None

    @last_modified.setter
    def last_modified(self, value: float | datetime | str | None) -> None:
        pass


def _etag_for(meta: ObjectMeta, variant: str) -> str:
    if variant == ORIGINAL:
        return meta.sha256[:32]
    return f"{meta.sha256[:24]}-{variant}-{RENDER_VERSION}"


def _open_checked(store: Store, image_id: str, meta: ObjectMeta) -> OpenedFile:
    """Open the original (either tier) and check the very descriptor that will be sent against the record.
    Raises OriginalMismatch or FileNotFoundError. Blocking."""
    opened = open_first(store.original_paths(image_id))
    try:
        stamp = check_open(opened.fobj.fileno(), opened.st, meta, store.verified_stamp(image_id))
    except BaseException:
        opened.fobj.close()
        raise
    store.note_verified(image_id, stamp)
    return opened


def _not_modified(request: web.Request, etag: str) -> bool:
    return any(tag.value in (etag, "*") for tag in request.if_none_match or ())


def _check_signature(request: web.Request, image_id: str, variant: str) -> bool:
    """True for a valid download signature, False when the URL carries none; 403 for a bad one."""
    if not any(p in request.query for p in SIGNATURE_PARAMS):
        return False
    signing.verify_with(
        request.app[keys.SETTINGS].signing,
        request.query,
        lambda exp: signing.Claims("download", image_id, "", exp, path=variant),
    )
    return True


def _ignore_range(request: web.Request, size: int, etag: str) -> bool:
    """Decide how to answer a Range header: False to let the file response serve the one range (206),
    True to send the whole file (several ranges, a malformed header, a stale If-Range); 416 when the
    range starts past the end."""
    value = request.headers.get("Range")
    if value is None:
        return False
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range.strip() != f'"{etag}"':
        return True
    m = _SINGLE_RANGE_RE.fullmatch(value.strip())
    if m is None or not (m[1] or m[2]):
        return True
    if m[1]:
        if int(m[1]) >= size:
            raise RangeNotSatisfiable(
                f"range starts past the end ({size} bytes)", headers={"Content-Range": f"bytes */{size}"}
            )
        return bool(m[2]) and int(m[2]) < int(m[1])
    if int(m[2]) == 0:
        raise RangeNotSatisfiable("empty suffix range", headers={"Content-Range": f"bytes */{size}"})
    return False


async def get_image(request: web.Request) -> web.StreamResponse:
    try:
        return await _serve(request)
    except NotFound:  # a missing public image may have a default to stand in (never on a hit)
        answer = await fallback.redirect_to_default(request)
        if answer is None:
            raise
        return answer


async def _serve(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings, store = app[keys.SETTINGS], app[keys.STORE]
    image_id = check_image_id(request.match_info["image_id"])
    name = request.match_info["variant"]
    spec: VariantSpec | None = None
    vary = False
    if name != ORIGINAL:
        spec = parse_variant(name)
        signed = _check_signature(request, image_id, name)
        check_size(spec, settings.limits.widths, settings.limits.max_variant_side, signed=signed)
        spec, vary = resolve_format(spec, request.headers.get("Accept"))
        name = spec.name
    else:
        signed = _check_signature(request, image_id, name)
        if not signed:
            raise SignatureInvalid("the original is served only with a signed URL")
    if await app[keys.INTEGRITY].refused(image_id):  # its copy here failed a check and is not repaired yet
        return await misses.redirect_to_holder(request, image_id, signed=signed, corrupt=True)
    meta = store.cached_meta(image_id) or await app[keys.INTEGRITY].meta(image_id)  # a lost sidecar: from the record
    if meta is None:
        # 307 to a holder + read repair, or 404
        return await misses.redirect_to_holder(request, image_id, signed=signed)
    if meta.private and not signed:
        raise SignatureInvalid("this image is served only with a signed URL")
    await app[keys.GATE].check(image_id)  # only `ready` images (memory-only once known ready)
    if not signed:  # a signed URL is the owner's own grant; public reads obey the app's Referer allowlist
        await app[keys.HOTLINK].check(image_id, request.headers.get("Referer"))
    original = spec is None  # the original (or its rendition) is the owner's: never cached publicly
    if original and meta.content_type in INPUT_ONLY:  # TIFF, BMP, ICO are never handed out as themselves
        spec = ORIGINAL_RENDITION
        name = spec.name
    etag = _etag_for(meta, name)
    if spec is not None:
        store.note_read(image_id, name)  # memory only: the variant LRU (a revalidation is a use too)
    headers = {
        "Cache-Control": CACHE_PRIVATE if (meta.private or original) else CACHE_PUBLIC,
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": IMAGE_CSP,
    }
    if vary:
        headers["Vary"] = "Accept"
    if _not_modified(request, etag):
        headers["ETag"] = f'"{etag}"'
        return web.Response(status=304, headers=headers)
    try:
        return await _send(request, image_id, meta, spec, etag, headers, signed)
    except OriginalMismatch as exc:  # never a 200 from a damaged copy: reported, and a good holder answers
        await app[keys.INTEGRITY].found(image_id, "serve" if spec is None else "variant", exc)
        return await misses.redirect_to_holder(request, image_id, signed=signed, corrupt=True)


async def _send(
    request: web.Request,
    image_id: str,
    meta: ObjectMeta,
    spec: VariantSpec | None,
    etag: str,
    headers: dict[str, str],
    signed: bool,
) -> web.StreamResponse:
    """The bytes: an original from a descriptor checked against its record, a variant built from verified
    bytes. Raises OriginalMismatch (nothing was sent) when the original is damaged."""
    store = request.app[keys.STORE]
    if spec is None:
        store.note_read(image_id, ORIGINAL)  # memory only: last read and promotion of a cold original
        ignore_range = "Range" in request.headers and _ignore_range(request, meta.bytes, etag)
        try:
            opened = await asyncio.to_thread(_open_checked, store, image_id, meta)
        except FileNotFoundError:  # removed since its record was read (a delete, a repair under way): a miss
            return await misses.redirect_to_holder(request, image_id, signed=signed)
        headers["Content-Type"] = meta.content_type
        return ImmutableFileResponse(opened, etag, ignore_range=ignore_range, headers=headers)
    path = await request.app[keys.RENDERER].ensure(image_id, spec, meta.content_type, meta)
    ignore_range = False
    if "Range" in request.headers:
        ignore_range = _ignore_range(request, (await asyncio.to_thread(os.stat, path)).st_size, etag)
    headers["Content-Type"] = spec.content_type
    return ImmutableFileResponse(path, etag, ignore_range=ignore_range, headers=headers)
