"""The node's fast lane (``common.fastlane``): an unsigned GET or HEAD of a variant of a public, `ready` image
whose file is in the open-file cache, answered from memory before aiohttp sees the request.

It takes a request only when aiohttp's path (``storage_node.handlers_read``) would answer it with that very file
and no other decision: no query string (a signature), no Range, no Origin, a configured size, a copy not known
damaged, the image's record cached, not private, known `ready` (the gate), its app known to have no Referer
allowlist, the cached file still good (``fastpath.hit``: unlinked, resized or a changed original are dropped). It
answers 200, or 304 for a matching If-None-Match, with the same headers. With ``node.published_tree`` the lane
stays out of ``/i/``: aiohttp's path links what it serves into the tree for nginx in front. Anything else goes on
to aiohttp, which answers exactly as without the lane.
"""

from __future__ import annotations

from aiohttp import web

from common.errors import MinicdnError
from common.fastlane import Answer, FileBody, Head, Lane, Recorder
from common.ids import is_image_id
from common.variants import VariantSpec, check_size, parse_variant, resolve_format
from storage_node import fastpath, keys
from storage_node.objects.store import ORIGINAL

ROUTE = "/i/{image_id}/{variant}"  # the route template aiohttp's path logs and counts the same requests under
VARY = b"Vary: Accept\r\n"
MAX_NAMES = 4096


def node_lane(app: web.Application) -> Lane:
    """The lane of one node process (its app's resources are open: call after the runner's setup)."""
    settings, store, gate, hotlink = app[keys.SETTINGS], app[keys.STORE], app[keys.GATE], app[keys.HOTLINK]
    status, metrics = app[keys.STATUS], app[keys.METRICS]
    widths, max_side = settings.limits.widths, settings.limits.max_variant_side
    published_tree = bool(settings.node.published_tree)
    hits = metrics.variant_cache.labels("hit")
    specs: dict[str, VariantSpec | None] = {}  # variant name -> its spec, None when unsigned requests may not have it

    def spec_of(name: str) -> VariantSpec | None:
        if name in specs:
            return specs[name]
        spec: VariantSpec | None = None
        try:
            parsed = parse_variant(name)
            check_size(parsed, widths, max_side)
            spec = parsed
        except MinicdnError:  # aiohttp's path explains
            pass
        if len(specs) < MAX_NAMES:  # names are the clients': remembered up to a bound
            specs[name] = spec
        return spec

    def route(head: Head) -> Answer | None:
        headers = head.headers
        if published_tree or head.query or "range" in headers or "origin" in headers:
            return None
        image_id, sep, name = head.path[3:].partition("/") if head.path.startswith("/i/") else ("", "", "")
        if not sep or name == ORIGINAL or not is_image_id(image_id):
            return None
        spec = spec_of(name)
        if spec is None:
            return None
        spec, vary = resolve_format(spec, headers.get("accept"))
        meta = store.cached_meta(image_id)
        if (
            meta is None
            or meta.private
            or store.is_corrupt(image_id)
            or not gate.is_ready(image_id)
            or not hotlink.known_unrestricted(image_id)
        ):
            return None
        held = fastpath.hit(store, image_id, spec.name, meta)
        if held is None:
            return None
        store.note_read(image_id, spec.name)  # memory only: the variant LRU
        hits.inc()
        extra = VARY if vary else b""
        if _matches(headers.get("if-none-match"), held.etag):
            held.release()
            return Answer(304, held.block_304 + extra, ROUTE)
        return Answer(200, held.block + extra, ROUTE, file=FileBody(held.fobj.fileno(), 0, held.size, held.release))

    def busy(delta: int) -> None:
        status.in_flight += delta

    return Lane(route, Recorder(metrics.http, "storage-node"), closing=lambda: status.stopping, busy=busy)


def _matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match names this ETag (strong or weak) or ``*``."""
    if if_none_match is None:
        return False
    quoted = f'"{etag}"'
    return any(tag.strip().removeprefix("W/") in (quoted, "*") for tag in if_none_match.split(","))
