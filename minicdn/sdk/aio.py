"""`AsyncClient`: the whole upload algorithm behind one method, plus lookups, srcset, search and delete.

One aiohttp session per client (connections are reused); every request to the query service carries the
API key, the PUT to a storage node never does (the signed URL is its only credential). Requests are
retried per `RetryPolicy` on connection failures, 503 and 429, never on another 4xx.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import aiohttp

from minicdn.sdk.errors import (
    ConnectionFailed,
    MinicdnError,
    NotFound,
    Quarantined,
    Rejected,
    Timeout,
    error_for,
)
from minicdn.sdk.models import Image, Page, Srcset
from minicdn.sdk.retry import NO_RETRY, RETRY_STATUSES, RetryPolicy, parse_retry_after
from minicdn.sdk.sources import Body, Progress, UploadSource

DEFAULT_WAIT_S = 60.0
POLL_FIRST_S, POLL_MAX_S = 0.1, 2.0  # status polling: starts quick (most images settle in well under a second)
SEARCH_PAGE_MAX = 1000


def _config(query_url: str | None, api_key: str | None) -> tuple[str, str | None]:
    url = query_url or os.environ.get("MINICDN_QUERY_URL")
    if not url:
        raise MinicdnError("no query service: pass query_url or set MINICDN_QUERY_URL", code="no_cluster")
    return url.rstrip("/"), api_key or os.environ.get("MINICDN_API_KEY") or None


def _listed(value: str | Sequence[str] | None) -> str | None:
    return value if value is None or isinstance(value, str) else ",".join(value)


def _when(value: datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def search_params(
    *,
    tags: Sequence[str] = (),
    any_tags: Sequence[str] = (),
    format: str | Sequence[str] | None = None,
    min_width: int | None = None,
    max_width: int | None = None,
    min_height: int | None = None,
    max_height: int | None = None,
    created_after: datetime | str | None = None,
    created_before: datetime | str | None = None,
    ready_after: datetime | str | None = None,
    ready_before: datetime | str | None = None,
    status: str | Sequence[str] | None = None,
    visibility: str | None = None,
    metadata: Mapping[str, str] | None = None,
    order: str = "newest",
) -> list[tuple[str, str]]:
    """The query string of `GET /v1/images` for these filters (shared with `minicdn images ls`)."""
    params: list[tuple[str, str]] = []
    for key, value in (
        ("tags", ",".join(tags)),
        ("any_tags", ",".join(any_tags)),
        ("format", _listed(format)),
        ("min_width", min_width),
        ("max_width", max_width),
        ("min_height", min_height),
        ("max_height", max_height),
        ("created_after", _when(created_after)),
        ("created_before", _when(created_before)),
        ("ready_after", _when(ready_after)),
        ("ready_before", _when(ready_before)),
        ("status", _listed(status)),
        ("visibility", visibility),
        ("order", order),
    ):
        if value not in (None, ""):
            params.append((key, str(value)))
    params.extend((f"meta.{k}", str(v)) for k, v in (metadata or {}).items())
    return params


class AsyncClient:
    """`async with AsyncClient() as cdn: image = await cdn.upload("photo.jpg")`.

    `query_url` and `api_key` default to `MINICDN_QUERY_URL` and `MINICDN_API_KEY`; `request_timeout` bounds
    each HTTP exchange (connect plus each read), `retry` says how often and how patiently to try again.
    """

    def __init__(
        self,
        query_url: str | None = None,
        api_key: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        request_timeout: float = 30.0,
    ) -> None:
        self.query_url, self._api_key = _config(query_url, api_key)
        self.retry = retry or RetryPolicy()
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=request_timeout, sock_read=request_timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running loop (aiohttp binds a session to its loop).
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, raise_for_status=False)
        return self._session

    # --- the HTTP exchange, with retries -------------------------------------------------------------------
    async def _request(
        self,
        method: str,
        url: str,
        *,
        auth: bool = True,
        body: Callable[[], Any] | None = None,
        retry: RetryPolicy | None = None,
        **kw: Any,
    ) -> Any:
        """The JSON body of a 2xx answer; the typed error otherwise. `body` makes a fresh request body per
        attempt (a stream cannot be sent twice)."""
        policy = retry or self.retry
        headers = dict(kw.pop("headers", {}))
        if auth and self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        attempt = 0
        while True:
            retry_after: float | None = None
            if body is not None:
                kw["data"] = body()
            try:
                async with self._http().request(method, url, headers=headers, **kw) as resp:
                    payload = await _json(resp)
                    if resp.status < 400:
                        return payload
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    error = error_for(resp.status, payload, reason=resp.reason or "", retry_after=retry_after)
                    if resp.status not in RETRY_STATUSES:
                        raise error
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                what = f"{method} {url.split('?')[0]}: {exc or type(exc).__name__}"
                error = ConnectionFailed(what, code="connection_failed")
                error.__cause__ = exc
            attempt += 1
            if attempt >= policy.attempts:
                raise error
            await asyncio.sleep(policy.delay(attempt - 1, retry_after))

    async def _api(self, method: str, path: str, **kw: Any) -> Any:
        return await self._request(method, f"{self.query_url}{path}", **kw)

    # --- uploads ------------------------------------------------------------------------------------------
    async def upload(
        self,
        source: UploadSource,
        *,
        visibility: str = "public",
        tags: Iterable[str] = (),
        metadata: Mapping[str, Any] | None = None,
        filename: str | None = None,
        client_ip: str | None = None,
        callback_url: str | None = None,
        wait: bool = True,
        # Same signature as the sync Client's; bounds only the wait for processing, not the transfer.
        timeout: float = DEFAULT_WAIT_S,  # noqa: ASYNC109
        on_progress: Progress | None = None,
    ) -> Image:
        """Upload a file (a path, bytes, or a binary file object, streamed in chunks) and, with `wait`, wait
        until it is `ready`. Raises `Rejected` (or `TooLarge`, `Unsupported`, `InvalidImage`), `Quarantined`,
        `Timeout` or another `MinicdnError`. `on_progress(sent, total)` follows the bytes sent."""
        body = Body(source)
        fields: dict[str, Any] = {"visibility": visibility, "tags": list(tags), "metadata": dict(metadata or {})}
        for key, value in (
            ("filename", filename or body.filename),
            ("size", body.size),
            ("client_ip", client_ip),
            ("callback_url", callback_url),
        ):
            if value is not None:
                fields[key] = value
        ticket = await self._api("POST", "/v1/uploads", json=fields)
        image_id = str(ticket["image_id"])
        await self._put(ticket["upload_url"], body, image_id, on_progress)
        if not wait:
            return await self.get(image_id)
        return await self.wait(image_id, timeout=timeout)

    async def _put(self, url: str, body: Body, image_id: str, on_progress: Progress | None) -> None:
        headers = {"Content-Type": "application/octet-stream"}
        if body.size is not None:
            headers["Content-Length"] = str(body.size)
        # A body that cannot be rewound (a pipe) gets one attempt; the others are re-read from the start.
        try:
            await self._request(
                "PUT",
                url,
                auth=False,
                headers=headers,
                body=lambda: body.chunks(on_progress),
                retry=None if body.rewindable else NO_RETRY,
            )
        except MinicdnError as exc:
            exc.image_id = image_id
            # After a retried PUT, `already_uploaded` means an earlier attempt landed (its answer was lost).
            if exc.code == "already_uploaded" and (await self.get(image_id)).status != "requested":
                return
            raise

    async def wait(self, image_id: str, *, timeout: float = DEFAULT_WAIT_S) -> Image:  # noqa: ASYNC109
        """Poll `GET /v1/images/{id}` (backing off from 0.1 s to 2 s) until the image settles: return it when
        `ready`; raise `Rejected`, `Quarantined`, `NotFound` (deleted, or a ticket that expired unused) or `Timeout`."""
        deadline = time.monotonic() + timeout
        pause = POLL_FIRST_S
        while True:
            image = await self.get(image_id)
            if image.status == "ready":
                return image
            if image.status == "rejected":
                raise Rejected(image.reason or "rejected", image_id=image_id)
            if image.status == "quarantined":
                raise Quarantined(image.reason or "held for moderation", code="quarantined", image_id=image_id)
            if image.status == "deleted":
                raise NotFound("the image was deleted", code="not_found", image_id=image_id)
            if image.status == "expired":  # the ticket ran out before the file arrived
                raise NotFound("the upload ticket expired unused", code="not_found", image_id=image_id)
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"still {image.status} after {timeout:g}s", code="timeout", image_id=image_id)
            await asyncio.sleep(min(pause, left))
            pause = min(POLL_MAX_S, pause * 1.5)

    # --- lookups ------------------------------------------------------------------------------------------
    async def get(self, image_id: str) -> Image:
        return Image.from_api(await self._api("GET", f"/v1/images/{image_id}"))

    async def url(
        self,
        image_id: str,
        *,
        w: float | None = None,
        h: float | None = None,
        dpr: float | None = None,
        fit: str | None = None,
        fmt: str | None = None,
        client_ip: str | None = None,
    ) -> str:
        """The URL of the variant that fits a `w`×`h` box (CSS pixels × `dpr`) on the nearest healthy node."""
        params = {
            k: str(v)
            for k, v in (("w", w), ("h", h), ("dpr", dpr), ("fit", fit), ("fmt", fmt), ("client_ip", client_ip))
            if v is not None
        }
        found = await self._api("GET", f"/v1/images/{image_id}/url", params=params)
        return str(found["url"])

    async def srcset(
        self,
        image_id: str,
        *,
        widths: Iterable[int] | None = None,
        fmt: str | None = None,
        fit: str | None = None,
        client_ip: str | None = None,
    ) -> Srcset:
        """The `srcset` of an image (each configured width, or `widths`, no larger than the image) and a `src`."""
        params = {
            k: v
            for k, v in (
                ("widths", ",".join(str(int(w)) for w in widths) if widths is not None else None),
                ("fmt", fmt),
                ("fit", fit),
                ("client_ip", client_ip),
            )
            if v is not None
        }
        found = await self._api("GET", f"/v1/images/{image_id}/srcset", params=params)
        return Srcset(str(found["srcset"]), str(found["src"]), tuple(int(w) for w in found.get("widths", ())))

    async def delete(self, image_id: str) -> None:
        """Delete an image from every node (idempotent)."""
        await self._api("DELETE", f"/v1/images/{image_id}")

    # --- search -------------------------------------------------------------------------------------------
    async def search_page(self, *, cursor: str | None = None, limit: int = 100, **filters: Any) -> Page:
        """One page of `GET /v1/images` (the caller's own images; filters as for `search`)."""
        params = search_params(**filters)
        params.append(("limit", str(max(1, min(SEARCH_PAGE_MAX, limit)))))
        if cursor:
            params.append(("cursor", cursor))
        found = await self._api("GET", "/v1/images", params=params)
        return Page(tuple(Image.from_api(i) for i in found["images"]), found.get("next_cursor"))

    async def search(
        self, *, page_size: int = 100, max_results: int | None = None, **filters: Any
    ) -> AsyncGenerator[Image, None]:
        """Every matching image, newest first (or `order="oldest"`), fetching pages as it goes. Filters:
        `tags` (all of), `any_tags`, `format` and `status` (one or a list: any of them),
        `min_width`/`max_width`/`min_height`/`max_height`, `created_after`/`created_before`/`ready_after`/
        `ready_before` (datetime or ISO 8601), `visibility`, `metadata` ({key: value}, all must match), `order`."""
        cursor: str | None = None
        left = max_results
        while left is None or left > 0:
            want = page_size if left is None else min(page_size, left)
            page = await self.search_page(cursor=cursor, limit=want, **filters)
            for image in page.images[:want]:  # never more than asked, whatever the server sends
                yield image
            if left is not None:
                left -= min(want, len(page.images))
            if page.next_cursor is None or not page.images:
                return
            cursor = page.next_cursor


async def _json(resp: aiohttp.ClientResponse) -> Any:
    try:
        return await resp.json(content_type=None)
    except ValueError:
        return None
