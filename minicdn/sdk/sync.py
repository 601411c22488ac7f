"""`Client`: the blocking face of `AsyncClient`, for code that runs no event loop.

It runs one `AsyncClient` on a private event loop in a daemon thread and hands each call over with
`run_coroutine_threadsafe`: one implementation of the upload algorithm and the retries (no second HTTP
stack to keep in step), one connection pool, and it works from any thread, including one that runs its
own event loop (the call then blocks that loop, like any blocking I/O would).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncGenerator, Coroutine, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

from minicdn.sdk.aio import DEFAULT_WAIT_S, AsyncClient
from minicdn.sdk.models import Image, Page, Srcset
from minicdn.sdk.retry import RetryPolicy
from minicdn.sdk.sources import Progress, UploadSource

T = TypeVar("T")


class Client:
    """`with Client() as cdn: image = cdn.upload("photo.jpg")`. Same arguments and methods as `AsyncClient`
    (see there), blocking; `search` is a plain iterator. Safe to share between threads (their calls run
    concurrently on the client's loop). Callbacks (`on_progress`) run on the client's thread."""

    def __init__(
        self,
        query_url: str | None = None,
        api_key: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        request_timeout: float = 30.0,
    ) -> None:
        self._aio = AsyncClient(query_url, api_key, retry=retry, request_timeout=request_timeout)
        self.query_url = self._aio.query_url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="minicdn-client", daemon=True)
        self._thread.start()
        # Closes the connections and stops the thread when the client is closed, collected, or at exit.
        self._finalizer = weakref.finalize(self, _shutdown, self._aio, self._loop, self._thread)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("this minicdn Client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and stop the client's thread (idempotent)."""
        self._finalizer()

    def upload(
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
        timeout: float = DEFAULT_WAIT_S,
        on_progress: Progress | None = None,
    ) -> Image:
        return self._run(
            self._aio.upload(
                source,
                visibility=visibility,
                tags=tags,
                metadata=metadata,
                filename=filename,
                client_ip=client_ip,
                callback_url=callback_url,
                wait=wait,
                timeout=timeout,
                on_progress=on_progress,
            )
        )

    def wait(self, image_id: str, *, timeout: float = DEFAULT_WAIT_S) -> Image:
        return self._run(self._aio.wait(image_id, timeout=timeout))

    def get(self, image_id: str) -> Image:
        return self._run(self._aio.get(image_id))

    def url(
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
        return self._run(self._aio.url(image_id, w=w, h=h, dpr=dpr, fit=fit, fmt=fmt, client_ip=client_ip))

    def srcset(
        self,
        image_id: str,
        *,
        widths: Iterable[int] | None = None,
        fmt: str | None = None,
        fit: str | None = None,
        client_ip: str | None = None,
    ) -> Srcset:
        return self._run(self._aio.srcset(image_id, widths=widths, fmt=fmt, fit=fit, client_ip=client_ip))

    def delete(self, image_id: str) -> None:
        self._run(self._aio.delete(image_id))

    def search_page(self, *, cursor: str | None = None, limit: int = 100, **filters: Any) -> Page:
        return self._run(self._aio.search_page(cursor=cursor, limit=limit, **filters))

    def search(self, *, page_size: int = 100, max_results: int | None = None, **filters: Any) -> Iterator[Image]:
        """Every matching image, one page fetched at a time (filters as for `AsyncClient.search`)."""
        results = self._aio.search(page_size=page_size, max_results=max_results, **filters)
        try:
            while True:
                try:
                    yield self._run(_next(results))
                except StopAsyncIteration:
                    return
        finally:
            if not self._loop.is_closed():
                self._run(results.aclose())


def _shutdown(aio: AsyncClient, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    if loop.is_closed():
        return
    asyncio.run_coroutine_threadsafe(aio.close(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


async def _next(results: AsyncGenerator[Image, None]) -> Image:
    return await anext(results)  # a coroutine, as run_coroutine_threadsafe wants
