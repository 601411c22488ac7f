"""The query service's fast lane (``common.fastlane``): a URL lookup ``GET /v1/images/{id}/url`` of an image and
a key already in memory, answered before aiohttp sees the request.

It takes a lookup only when aiohttp's path (``handlers_images.get_url``) would answer it 200 from memory: the
key (if any) known and not revoked, the image's location known, visible to the caller, `ready`, with a healthy
holder, and the query's parameters valid. The answer is the same document (``handlers_images.url_answer``),
the key's rate is taken as aiohttp's path takes it. Anything else (an unknown key or image, an error to
explain, a default image standing in, a key over its rate, a forwarded address to read) goes on to aiohttp,
which answers exactly as without the lane.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from aiohttp import web

from common.errors import MinicdnError
from common.fastlane import Answer, Head, Lane, Recorder
from common.ids import is_image_id
from query_service import keys
from query_service.handlers_images import check_visible, rank_servable, url_answer
from query_service.requests import parse_url_params

ROUTE = "/v1/images/{image_id}/url"  # the route template aiohttp's path logs and counts lookups under
PREFIX, SUFFIX = "/v1/images/", "/url"
HEADERS = b"Content-Type: application/json; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n"


def query_lane(app: web.Application) -> Lane:
    """The lane of one query-service process (its app's resources are open: call after the runner's setup)."""
    settings, auth, locations = app[keys.SETTINGS], app[keys.AUTH], app[keys.LOCATIONS]
    proxies = app[keys.PROXIES]

    def route(head: Head) -> Answer | None:
        path, headers = head.path, head.headers
        if head.method != "GET" or not (path.startswith(PREFIX) and path.endswith(SUFFIX)):
            return None
        image_id = path[len(PREFIX) : -len(SUFFIX)]
        if not is_image_id(image_id) or "origin" in headers:
            return None
        if proxies.networks and ("forwarded" in headers or "x-forwarded-for" in headers):
            return None  # the client's address is read from the chain by aiohttp's path
        header = headers.get("authorization")
        key = None if header is None else auth.known(header)
        loc = locations.known(image_id)
        if (header is not None and key is None) or loc is None:
            return None
        pairs = parse_qsl(head.query, keep_blank_values=True)
        params = dict(pairs)
        if len(params) != len(pairs) or "rid" in params:  # a repeated parameter (aiohttp's path reads the first),
            return None  # a request id to adopt (``common.reqlog``)
        try:
            q = parse_url_params(params)
            check_visible(loc, key, public_only=False, original=q.variant == "original")
            found = rank_servable(app, image_id, loc, key, q.client_ip, head.remote)
            document = url_answer(settings, image_id, q, found, headers.get("accept"))
            if key is not None:
                auth.take(key)
        except MinicdnError:  # aiohttp's path explains (and takes the key's rate for a refusal)
            return None
        return Answer(200, HEADERS, ROUTE, body=json.dumps(document).encode())

    return Lane(route, Recorder(app[keys.METRICS], "query-service"))
