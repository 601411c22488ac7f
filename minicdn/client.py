"""Low-level helpers of the operator commands (`minicdn url|status|node|repair|keys|bench`) over one aiohttp
session: find the cluster, call an endpoint, PUT bytes. Apps use the SDK (`minicdn.Client`), which the
`upload`, `delete` and `images` commands use too; errors here are the SDK's typed errors."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from minicdn.sdk.errors import MinicdnError, error_for

CHUNK_BYTES = 256 * 1024
# Below the servers' idle keep-alive (`http.header_timeout_s`, 10 s by default): a pooled connection is
# dropped here before the server closes it, never reused just as the server's close arrives (which fails
# that request with "Server disconnected", as it did between the bench's rows).
IDLE_KEEPALIVE_S = 5.0


def connector(limit: int) -> aiohttp.TCPConnector:
    """A connection pool for the bench's long sessions (``limit`` connections at most)."""
    return aiohttp.TCPConnector(limit=limit, keepalive_timeout=IDLE_KEEPALIVE_S)


# One error hierarchy for the CLI and the SDK: `except ClientError` catches every typed SDK error too.
ClientError = MinicdnError


@dataclass(frozen=True)
class ClusterRef:
    query_url: str
    api_key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def find_cluster(query_url: str | None, api_key: str | None, state_dir: str | Path) -> ClusterRef:
    """Flags, then MINICDN_QUERY_URL / MINICDN_API_KEY, then <state-dir>/cluster.json."""
    query_url = query_url or os.environ.get("MINICDN_QUERY_URL")
    api_key = api_key or os.environ.get("MINICDN_API_KEY")
    if not (query_url and api_key):
        path = Path(state_dir) / "cluster.json"
        try:
            info = json.loads(path.read_text())
        except FileNotFoundError:
            raise ClientError(
                f"no cluster: pass --query-url/--api-key, set MINICDN_QUERY_URL/MINICDN_API_KEY, "
                f"or run `minicdn dev` (expects {path})",
                code="no_cluster",
            ) from None
        query_url = query_url or info["query_url"]
        api_key = api_key or info["api_key"]
    return ClusterRef(str(query_url).rstrip("/"), str(api_key))


async def _json_or_raise(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        data: dict[str, Any] = await resp.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        data = {}
    if resp.status >= 400:
        raise error_for(resp.status, data, reason=resp.reason or "")
    return data


async def request_upload(session: aiohttp.ClientSession, cluster: ClusterRef, **fields: Any) -> dict[str, Any]:
    async with session.post(f"{cluster.query_url}/v1/uploads", json=fields, headers=cluster.auth) as resp:
        return await _json_or_raise(resp)


async def put_bytes(
    session: aiohttp.ClientSession, upload_url: str, body: bytes | AsyncIterator[bytes], size: int | None = None
) -> dict[str, Any]:
    headers = {"Content-Type": "application/octet-stream"}
    if size is not None:
        headers["Content-Length"] = str(size)
    async with session.put(upload_url, data=body, headers=headers) as resp:
        return await _json_or_raise(resp)


async def file_chunks(path: Path, on_chunk: Callable[[int], None] | None = None) -> AsyncIterator[bytes]:
    with path.open("rb") as fobj:
        while True:
            chunk = await asyncio.to_thread(fobj.read, CHUNK_BYTES)
            if not chunk:
                return
            if on_chunk:
                on_chunk(len(chunk))
            yield chunk


async def upload_file(
    session: aiohttp.ClientSession,
    cluster: ClusterRef,
    path: Path,
    on_chunk: Callable[[int], None] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    size = (await asyncio.to_thread(path.stat)).st_size
    ticket = await request_upload(session, cluster, filename=path.name, size=size, **fields)
    return await put_bytes(session, ticket["upload_url"], file_chunks(path, on_chunk), size)


async def get_json(
    session: aiohttp.ClientSession, cluster: ClusterRef, path: str, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    async with session.get(f"{cluster.query_url}{path}", params=params, headers=cluster.auth) as resp:
        return await _json_or_raise(resp)


async def send_json(
    session: aiohttp.ClientSession, cluster: ClusterRef, method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    async with session.request(method, f"{cluster.query_url}{path}", json=body, headers=cluster.auth) as resp:
        return await _json_or_raise(resp)


async def remove_images(session: aiohttp.ClientSession, cluster: ClusterRef, image_ids: list[str]) -> int:
    """Delete images (what a bench uploaded); how many deletes were accepted (one already gone is not counted)."""
    sem = asyncio.Semaphore(8)

    async def one(image_id: str) -> bool:
        async with sem:
            try:
                await send_json(session, cluster, "DELETE", f"/v1/images/{image_id}")
            except ClientError:
                return False
        return True

    return sum(await asyncio.gather(*(one(i) for i in image_ids)))
