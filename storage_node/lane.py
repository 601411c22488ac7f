"""The node's fast lane (``common.fastlane``): an unsigned GET or HEAD of a variant of a public, `ready` image
whose file is in the open-file cache, answered from memory before aiohttp sees the request.

It takes a request only when aiohttp's path (``storage_node.handlers_read``) would answer it with that very file
and no other decision: no query string (a signature), no Range, no Origin, a configured size, a copy not known
damaged, the image's record cached, not private, known `ready` (the gate), its app known to have no Referer
allowlist, the cached file still good (``fastpath.hit``: unlinked, resized or a changed original are dropped). It
answers 200, or 304 for a matching If-None-Match, with the same headers. With ``node.published_tree`` it takes a
named variant only once this process knows it linked into the tree (aiohttp's path links what it serves, for nginx
in front). Anything else goes on to aiohttp, which answers exactly as without the lane.
"""

from __future__ import annotations

import contextlib

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
    status = app[keys.STATUS]

    def busy(delta: int) -> None:
        status.in_flight += delta

    route = _Route(app)
    return Lane(route, Recorder(app[keys.METRICS].http, "storage-node"), closing=lambda: status.stopping, busy=busy)


class _Route:
    def __init__(self, app: web.Application) -> None:
        settings = app[keys.SETTINGS]
        self.store, self.gate, self.hotlink = app[keys.STORE], app[keys.GATE], app[keys.HOTLINK]
        self.widths, self.max_side = settings.limits.widths, settings.limits.max_variant_side
        self.published_tree = bool(settings.node.published_tree)
        self.hits = app[keys.METRICS].variant_cache.labels("hit")
        self.specs: dict[str, VariantSpec | None] = {}  # name -> its spec; None: not for unsigned requests

    def __call__(self, head: Head) -> Answer | None:
        headers = head.headers
        if head.query or "range" in headers or "origin" in headers or not head.path.startswith("/i/"):
            return None
        image_id, _, name = head.path[3:].partition("/")
        spec = self._spec(name) if is_image_id(image_id) and name != ORIGINAL else None
        if spec is None:
            return None
        spec, vary = resolve_format(spec, headers.get("accept"))
        store = self.store
        meta = store.cached_meta(image_id)
        if meta is None or meta.private or not self._servable(image_id):
            return None
        if self.published_tree and not vary and not store.published.is_known(image_id, spec.name):
            return None  # aiohttp's path links it for nginx in front
        held = fastpath.hit(store, image_id, spec.name, meta)
        if held is None:
            return None
        store.note_read(image_id, spec.name)  # memory only: the variant LRU
        self.hits.inc()
        extra = VARY if vary else b""
        if _matches(headers.get("if-none-match"), held.etag):
            held.release()
            return Answer(304, held.block_304 + extra, ROUTE)
        return Answer(200, held.block + extra, ROUTE, file=FileBody(held.fobj.fileno(), 0, held.size, held.release))

    def _servable(self, image_id: str) -> bool:
        """Known `ready`, not known damaged, its app known to have no Referer allowlist: memory only."""
        return (
            not self.store.is_corrupt(image_id)
            and self.gate.is_ready(image_id)
            and self.hotlink.known_unrestricted(image_id)
        )

    def _spec(self, name: str) -> VariantSpec | None:
        if name in self.specs:
            return self.specs[name]
        spec: VariantSpec | None = None
        with contextlib.suppress(MinicdnError):  # aiohttp's path explains
            parsed = parse_variant(name)
            check_size(parsed, self.widths, self.max_side)
            spec = parsed
        if len(self.specs) < MAX_NAMES:  # names are the clients': remembered up to a bound
            self.specs[name] = spec
        return spec


def _matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match names this ETag (strong or weak) or ``*``."""
    if if_none_match is None:
        return False
    quoted = f'"{etag}"'
    return any(tag.strip().removeprefix("W/") in (quoted, "*") for tag in if_none_match.split(","))
