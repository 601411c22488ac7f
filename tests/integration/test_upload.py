"""Signed uploads: the happy path, and every rejection with its docs/api.md status, code and no file left."""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from typing import Any, TypedDict
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest

from common import signing
from common.db.rows import fetch_one
from tests.cluster import TestCluster, make_jpeg


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height (a decompression bomb's header) with one empty IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def assert_nothing_stored(cluster: TestCluster) -> None:
    for node_id in cluster.node_settings:
        assert cluster.files_under(node_id, "tmp") == [], node_id
        assert cluster.files_under(node_id, "objects") == [], node_id


async def assert_still_requested(cluster: TestCluster, image_id: str) -> None:
    status, body = await cluster.api("GET", f"/v1/images/{image_id}")
    assert status == 200 and body["status"] == "requested" and body["replicas"] == []


async def assert_rejected(cluster: TestCluster, image_id: str, code: str) -> None:
    """A PUT refused for its content uses up the ticket: the image is `rejected`, with the refusal as reason."""
    status, body = await cluster.api("GET", f"/v1/images/{image_id}")
    assert status == 200 and body["status"] == "rejected" and body["replicas"] == [], body
    assert body["reason"].startswith(f"{code}: "), body


def with_params(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return parts._replace(query=urlencode(query)).geturl()


async def test_upload_ticket_and_put(cluster: TestCluster) -> None:
    ticket = await cluster.request_upload(filename="cat.jpg", client_ip="52.16.1.10", tags=["cats"])
    assert ticket["status"] == "requested" and ticket["upload_method"] == "PUT"
    assert ticket["region"] == "eu-west" and ticket["max_bytes"] == 20 * 1024 * 1024
    assert ticket["status_url"].endswith(f"/v1/images/{ticket['image_id']}")
    data = make_jpeg(seed=21)
    status, body = await cluster.put(ticket["upload_url"], data)
    assert status == 201
    assert body == {
        "image_id": ticket["image_id"],
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "status": "uploaded",
    }


@pytest.mark.parametrize("param", ["sig", "exp", "max", "kid"])
async def test_tampered_signature_is_403(cluster: TestCluster, param: str) -> None:
    ticket = await cluster.request_upload()
    query = parse_qs(urlsplit(ticket["upload_url"]).query)
    original = query[param][0]
    if param == "sig":
        tampered = original[:-2] + ("AA" if original[-2:] != "AA" else "BB")
    elif param == "kid":
        tampered = "nope"
    else:
        tampered = str(int(original) + 60)
    status, body = await cluster.put(with_params(ticket["upload_url"], **{param: tampered}), make_jpeg())
    assert status == 403 and body["error"]["code"] == "bad_signature", body
    assert_nothing_stored(cluster)
    await assert_still_requested(cluster, ticket["image_id"])


async def test_expired_upload_url_is_403_expired(cluster: TestCluster) -> None:
    ticket = await cluster.request_upload()
    settings = cluster.node_settings[ticket["node_id"]]
    key = settings.signing_key("k1")
    assert key is not None
    max_bytes = ticket["max_bytes"]
    exp = int(time.time()) - 1
    params = signing.sign(
        signing.Claims("upload", ticket["image_id"], ticket["node_id"], exp, max_bytes=max_bytes), "k1", key
    )
    url = with_params(ticket["upload_url"], **params)
    status, body = await cluster.put(url, make_jpeg())
    assert status == 403 and body["error"]["code"] == "expired"
    assert_nothing_stored(cluster)


async def test_upload_url_is_bound_to_its_node(cluster: TestCluster) -> None:
    ticket = await cluster.request_upload(client_ip="3.0.1.10")
    other = cluster.node_settings["ap-southeast-1"].node.base_url
    parts = urlsplit(ticket["upload_url"])
    status, body = await cluster.put(f"{other}{parts.path}?{parts.query}", make_jpeg())
    assert status == 403 and body["error"]["code"] == "bad_signature"
    assert_nothing_stored(cluster)


async def test_declared_oversize_body_is_413_before_reading(cluster: TestCluster) -> None:
    ticket = await cluster.request_upload()
    size = 25 * 1024 * 1024
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        chunk = b"\xff\xd8\xff" + bytes(64 * 1024 - 3)
        while sent < size:
            sent += len(chunk)
            yield chunk

    try:
        status, resp = await cluster.put(ticket["upload_url"], body(), headers={"Content-Length": str(size)})
    except aiohttp.ClientOSError:  # the node may close the socket while the client is still sending
        status, resp = 413, {"error": {"code": "too_large"}}
    assert status == 413 and resp["error"]["code"] == "too_large"
    assert_nothing_stored(cluster)
    await assert_rejected(cluster, ticket["image_id"], "too_large")


async def test_streamed_oversize_body_is_413_without_buffering(cluster: TestCluster) -> None:
    """Chunked, so the size is unknown up front: the cap is enforced while streaming, and the node's
    Python heap never holds the body (traced allocations stay far below the 25 MB sent)."""
    ticket = await cluster.request_upload()
    size = 25 * 1024 * 1024
    chunk = b"\xff\xd8\xff" + bytes(256 * 1024 - 3)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // len(chunk)):
            yield chunk

    tracemalloc.start()
    try:
        try:
            status, resp = await cluster.put(ticket["upload_url"], body())
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
            status, resp = 413, {"error": {"code": "too_large"}}
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 413 and resp["error"]["code"] == "too_large"
    assert peak < 8 * 1024 * 1024, f"peak traced memory {peak} bytes"
    assert_nothing_stored(cluster)


async def test_text_named_jpg_is_415(cluster: TestCluster) -> None:
    ticket = await cluster.request_upload(filename="notes.jpg", content_type="image/jpeg")
    status, body = await cluster.put(
        ticket["upload_url"], b"just some text, not a photo\n" * 100, headers={"Content-Type": "image/jpeg"}
    )
    assert status == 415 and body["error"]["code"] == "unsupported_type"
    assert_nothing_stored(cluster)
    await assert_rejected(cluster, ticket["image_id"], "unsupported_type")


async def test_pixel_bomb_header_is_422(cluster: TestCluster) -> None:
    ticket = await cluster.request_upload()
    status, body = await cluster.put(ticket["upload_url"], png_header_only(30000, 30000))
    assert status == 422 and body["error"]["code"] == "invalid_image"
    assert "limit" in body["error"]["message"]
    assert_nothing_stored(cluster)


async def test_garbage_after_magic_bytes_is_422(cluster: TestCluster) -> None:
    ticket = await cluster.request_upload()
    status, body = await cluster.put(ticket["upload_url"], b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    assert status == 422 and body["error"]["code"] == "invalid_image"
    assert_nothing_stored(cluster)


async def test_second_put_to_a_used_url_is_409(cluster: TestCluster) -> None:
    ticket = await cluster.request_upload()
    status, _ = await cluster.put(ticket["upload_url"], make_jpeg(seed=1))
    assert status == 201
    before = cluster.files_under(ticket["node_id"], "objects")
    status, body = await cluster.put(ticket["upload_url"], make_jpeg(seed=2))
    assert status == 409 and body["error"]["code"] == "already_uploaded"
    assert cluster.files_under(ticket["node_id"], "objects") == before
    await cluster.wait_ready(ticket["image_id"])  # eager variants are rendered through tmp/
    assert cluster.files_under(ticket["node_id"], "tmp") == []


async def test_racing_puts_to_one_url_store_exactly_one(cluster: TestCluster) -> None:
    ticket = await cluster.request_upload()
    bodies = [make_jpeg(seed=s) for s in (5, 6, 7, 8)]
    results = await asyncio.gather(*(cluster.put(ticket["upload_url"], b) for b in bodies))
    statuses = sorted(s for s, _ in results)
    assert statuses == [201, 409, 409, 409], results
    winner = next(b for s, b in results if s == 201)
    assert cluster.disk_sha256(ticket["node_id"], ticket["image_id"]) == winner["sha256"]
    await cluster.wait_ready(ticket["image_id"])  # eager variants are rendered through tmp/
    assert cluster.files_under(ticket["node_id"], "tmp") == []


async def test_a_burst_of_puts_shares_transactions_and_each_is_judged_on_its_own(cluster: TestCluster) -> None:
    """Group commit (storage_node.commits): PUTs that queue while earlier ones commit share a transaction, yet
    each gets its own answer, its own file and rows; the losers of a race for one URL get 409, the rest 201."""
    from storage_node import keys

    tickets = [await cluster.request_upload(client_ip="198.51.100.7") for _ in range(12)]
    raced = await cluster.request_upload(client_ip="198.51.100.7")
    node = tickets[0]["node_id"]
    assert {t["node_id"] for t in [*tickets, raced]} == {node}
    group = cluster.apps[node][keys.COMMITS].group
    groups, items = group.groups, group.items
    puts = [cluster.put(t["upload_url"], make_jpeg(seed=100 + n)) for n, t in enumerate(tickets)]
    puts += [cluster.put(raced["upload_url"], make_jpeg(seed=200 + n)) for n in range(3)]
    results = await asyncio.gather(*puts)
    assert [s for s, _ in results[:12]] == [201] * 12, results
    assert sorted(s for s, _ in results[12:]) == [201, 409, 409], results[12:]
    assert group.items - items > group.groups - groups, "no two PUTs shared a transaction"
    winners = [*results[:12], next(r for r in results[12:] if r[0] == 201)]
    for ticket, (_, body) in zip([*tickets, raced], winners, strict=True):
        assert cluster.disk_sha256(node, ticket["image_id"]) == body["sha256"]
        status, image = await cluster.api("GET", f"/v1/images/{ticket['image_id']}")
        assert status == 200 and image["status"] in ("uploaded", "processing", "ready"), image
        assert image["sha256"] == body["sha256"]
        assert {r["node_id"] for r in image["replicas"]} == set(cluster.node_settings), image["replicas"]
    # Processing renders eager variants through tmp/, so nothing may be left there once every image settled.
    await asyncio.gather(*(cluster.wait_ready(t["image_id"], timeout_s=60) for t in [*tickets, raced]))
    assert cluster.files_under(node, "tmp") == []


class CountRow(TypedDict):
    n: int


async def test_a_ticket_whose_audit_row_fails_leaves_no_image_row(
    cluster: TestCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ticket's image row and its audit row are one transaction (one pipelined round trip, no explicit
    BEGIN): the audit statement failing rolls the image row back."""
    from common.db import audit
    from query_service import keys as query_keys

    pool = cluster.apps["query"][query_keys.POOL]
    count = "SELECT count(*) AS n FROM images"
    before = await fetch_one(pool, CountRow, count)

    async def failing_record(conn: Any, *_args: Any, **_kw: Any) -> None:
        await conn.execute("SELECT 1 / 0")

    monkeypatch.setattr(audit, "record", failing_record)
    status, body = await cluster.api("POST", "/v1/uploads", json={})
    assert status == 500, body
    assert await fetch_one(pool, CountRow, count) == before
    monkeypatch.undo()
    status, _ = await cluster.api("POST", "/v1/uploads", json={})
    assert status == 201
    row = await fetch_one(pool, CountRow, count)
    assert row is not None and before is not None and row["n"] == before["n"] + 1


async def test_upload_request_validation(cluster: TestCluster) -> None:
    status, body = await cluster.api("POST", "/v1/uploads", data=b"{not json", headers={})
    assert status == 400 and body["error"]["code"] == "invalid_request"
    status, body = await cluster.api("POST", "/v1/uploads", json={"visibility": "secret"})
    assert status == 400 and body["error"]["code"] == "invalid_request"
    status, body = await cluster.api("POST", "/v1/uploads", json={"size": 21 * 1024 * 1024})
    assert status == 413 and body["error"]["code"] == "too_large"
    status, body = await cluster.api("POST", "/v1/uploads", json={"client_ip": "not-an-ip"})
    assert status == 400
    assert cluster.session is not None
    async with cluster.session.post(f"{cluster.query_url}/v1/uploads", json={}) as resp:
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"
    async with cluster.session.post(
        f"{cluster.query_url}/v1/uploads", json={}, headers={"Authorization": "Bearer mk_nope_nope"}
    ) as resp:
        assert resp.status == 401
