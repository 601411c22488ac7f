"""GET|HEAD /i/{image_id}/{variant}: originals and variants from disk via sendfile, with explicit headers.

Private images and every original need a signed URL (scope `download`, bound to the image and the
variant path). Responses carry a strong ETag (an original's from its content hash; a variant's is nginx's
formula, mtime and size, over a deterministic mtime: ``storage_node.objects.published``), a Content-Type from
the detected format (never from the client), nosniff and a restrictive CSP; a single byte range gets 206, an
unsatisfiable one 416, and several ranges get the whole file (no range amplification). Every file is sent from
an open descriptor by ``storage_node.sendfile``; the most read ones stay open (``node.fd_cache_size``), so a hit
is answered on the loop with no thread hop and no path walk (``storage_node.fastpath``).

With ``node.published_tree``, a variant served unsigned to anyone (ready, public, no hotlink allowlist, not
``auto``) is hard-linked into the published tree, for nginx in front to serve from then on.

Integrity: an original is sent from a descriptor checked against its record first (its size always, its
hash when its bytes changed since last verified: ``storage_node.objects.verify``), and a variant is built
only from verified bytes. A copy that fails is never answered with 200: it is reported
(``storage_node.integrity``) and the request gets a 307 to a holder with a good copy (or 503).
"""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

from aiohttp import web

from common import signing
from common.errors import NotFound, SignatureInvalid
from common.hardening import IMAGE_CSP
from common.ids import check_image_id
from common.variants import ORIGINAL_RENDITION, VariantSpec, check_size, parse_variant, resolve_format
from storage_node import fallback, fastpath, keys, misses
from storage_node.objects.formats import INPUT_ONLY
from storage_node.objects.published import etag_for_file, fix_mtime, variant_mtime
from storage_node.objects.store import ORIGINAL, ObjectMeta, Store
from storage_node.objects.verify import OriginalMismatch, check_open
from storage_node.tierfile import OpenedFile, open_first

CACHE_PUBLIC = "public, max-age=31536000, immutable"
CACHE_PRIVATE = "private, max-age=3600"
SIGNATURE_PARAMS = ("exp", "kid", "sig")


def _original_etag(meta: ObjectMeta) -> str:
    return meta.sha256[:32]


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
    served = _from_open_file(request, image_id, name, meta, vary)
    if served is not None:
        # Held open here, maybe not published yet (the setting first: ``path_for`` costs a path check per hit).
        if settings.node.published_tree and not (signed or vary or meta.private or original):
            await _publish(request, image_id, name, store.path_for(image_id, name))
        return served
    try:
        return await _answer(request, image_id, name, meta, spec, signed=signed, vary=vary)
    except OriginalMismatch as exc:  # never a 200 from a damaged copy: reported, and a good holder answers
        await app[keys.INTEGRITY].found(image_id, "serve" if spec is None else "variant", exc)
        return await misses.redirect_to_holder(request, image_id, signed=signed, corrupt=True)


async def _answer(
    request: web.Request,
    image_id: str,
    name: str,
    meta: ObjectMeta,
    spec: VariantSpec | None,
    *,
    signed: bool,
    vary: bool,
) -> web.StreamResponse:
    """A miss of the open-file cache: the file (a variant built first when needed), then 304 or its bytes. Raises
    OriginalMismatch (nothing was sent) when the original, or the copy a variant is built from, is damaged."""
    original = spec is None or spec == ORIGINAL_RENDITION  # the owner's: never cached publicly
    path, etag = await _file_of(request.app, image_id, spec, meta)
    headers = {
        "Cache-Control": CACHE_PRIVATE if (meta.private or original) else CACHE_PUBLIC,
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": IMAGE_CSP,
    }
    if vary:
        headers["Vary"] = "Accept"
    if path is not None and not (signed or vary or meta.private or original):
        await _publish(request, image_id, name, path)
    if fastpath.not_modified(request, etag):
        headers["ETag"] = f'"{etag}"'
        return web.Response(status=304, headers=headers)
    return await _send(request, image_id, meta, spec, path, etag, headers, signed)


def _from_open_file(
    request: web.Request, image_id: str, name: str, meta: ObjectMeta, vary: bool
) -> web.StreamResponse | None:
    """The answer from the open-file cache (``storage_node.fastpath``), on the loop: no thread, no path walk."""
    store = request.app[keys.STORE]
    held = fastpath.hit(store, image_id, name, meta)
    if held is None:
        return None
    store.note_read(image_id, name)  # memory only: the variant LRU, promotion of a cold original
    if name != ORIGINAL:
        request.app[keys.METRICS].variant_cache.labels("hit").inc()
    return fastpath.respond(request, held, vary)


async def _file_of(
    app: web.Application, image_id: str, spec: VariantSpec | None, meta: ObjectMeta
) -> tuple[Path | None, str]:
    """The ETag and, for a variant, its path (built first when needed)."""
    if spec is None:
        return None, _original_etag(meta)
    app[keys.STORE].note_read(image_id, spec.name)  # memory only: the variant LRU (a revalidation is a use too)
    return await _variant_file(app, image_id, spec, meta)


async def _variant_file(app: web.Application, image_id: str, spec: VariantSpec, meta: ObjectMeta) -> tuple[Path, str]:
    """The variant's path (built first when needed) and its ETag, nginx's for the same file."""
    path = await app[keys.RENDERER].ensure(image_id, spec, meta.content_type, meta)
    mtime = variant_mtime(meta.sha256, spec.name)
    try:
        st = fix_mtime(path, mtime)  # a stat (once per old variant a utime): microseconds, not worth a thread hop
    except FileNotFoundError:  # removed since (an eviction by another process): the next request rebuilds it
        app[keys.STORE].forget(image_id)
        raise NotFound("no such variant") from None
    return path, etag_for_file(mtime, st.st_size)


async def _send(
    request: web.Request,
    image_id: str,
    meta: ObjectMeta,
    spec: VariantSpec | None,
    path: Path | None,
    etag: str,
    headers: dict[str, str],
    signed: bool,
) -> web.StreamResponse:
    """The bytes: an original from a descriptor checked against its record, a variant built from verified
    bytes. Raises OriginalMismatch (nothing was sent) when the original is damaged."""
    store = request.app[keys.STORE]
    if spec is None:
        store.note_read(image_id, ORIGINAL)  # memory only: last read and promotion of a cold original
        epoch = store.open_files.epoch  # read before opening: a change meanwhile keeps this file out of the cache
        try:
            opened = await asyncio.to_thread(_open_checked, store, image_id, meta)
        except FileNotFoundError:  # removed since its record was read (a delete, a repair under way): a miss
            return await misses.redirect_to_holder(request, image_id, signed=signed)
        headers["Content-Type"] = meta.content_type
        fobj, size, key = opened.fobj, opened.st.st_size, (image_id, ORIGINAL)
    else:
        assert path is not None  # a variant's path comes with it
        epoch = store.open_files.epoch
        try:
            fobj, size = await asyncio.to_thread(_open_variant, path)
        except FileNotFoundError:  # evicted since (by another process): the next request rebuilds it
            store.forget(image_id)
            raise NotFound("no such variant") from None
        headers["Content-Type"] = spec.content_type
        key = (image_id, spec.name)
    vary = headers.pop("Vary", None) is not None  # per request (format negotiation): not one of the file's headers
    held = fastpath.keep(store.open_files, epoch, key, fobj, size, etag, headers)
    return fastpath.respond(request, held, vary)


def _open_variant(path: Path) -> tuple[io.BufferedReader, int]:
    """The variant opened, with the size of that very descriptor. Blocking."""
    fobj = path.open("rb")
    try:
        return fobj, os.fstat(fobj.fileno()).st_size
    except BaseException:
        fobj.close()
        raise


async def _publish(request: web.Request, image_id: str, name: str, path: Path) -> None:
    """Link a variant anyone may be sent unsigned into the published tree (``node.published_tree``). Its image is
    public and `ready` (checked above) and its app has no hotlink allowlist (checked here)."""
    app = request.app
    if not app[keys.SETTINGS].node.published_tree or not await app[keys.HOTLINK].unrestricted(image_id):
        return
    store, gate, hotlink = app[keys.STORE], app[keys.GATE], app[keys.HOTLINK]
    # Synchronous (a mkdir and a link): nothing on this loop runs between the link and the checks below, and a
    # delete or rejection this process hears of forgets the gate and unpublishes on this loop too (siblings).
    if store.published.publish(path, image_id, name) and not (
        gate.is_ready(image_id) and not store.is_corrupt(image_id) and hotlink.known_unrestricted(image_id)
    ):
        store.published.unpublish(image_id)
