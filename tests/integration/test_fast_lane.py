"""The node's fast lane (``storage_node.lane`` over ``common.fastlane``) in a real cluster: a cached hit of a public
variant is answered before aiohttp with the very answer aiohttp's path gives (headers, bytes, 304, HEAD), on raw
keep-alive connections with pipelined requests; everything the lane does not take (a query, a Range, a private or
deleted image, an upload, another route) reaches aiohttp on the same connection and is answered as before; the
lane's answers are logged and counted like aiohttp's."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest

from storage_node import keys as node_keys
from tests.cluster import REGION_IPS, TestCluster, make_jpeg

NODE = "us-east-1"
CLIENT = REGION_IPS["us-east"][1]
LANE_ONLY = ("date", "x-request-id", "server")  # aiohttp's path adds Server; the lane does not


async def _raw(
    port: int, payload: bytes, responses: int, heads: tuple[int, ...] = ()
) -> list[tuple[int, dict[str, str], bytes]]:
    """``payload`` written at once on one connection; the ``responses`` answers read back, in order (those at the
    indexes ``heads`` answer a HEAD: no body whatever their Content-Length)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        answers = []
        for index in range(responses):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            length = 0 if index in heads else int(headers.get("content-length", "0"))
            body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
            answers.append((status, headers, body))
        return answers
    finally:
        writer.close()


def _get(path: str, *extra: str, method: str = "GET") -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: x", *extra, "", ""]).encode()


def _fixed(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in LANE_ONLY}


async def test_a_hit_takes_the_lane_with_aiohttps_answer_and_the_rest_reaches_aiohttp(
    cluster: TestCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="minicdn.access")
    up = await cluster.upload(make_jpeg(seed=301), client_ip=CLIENT)
    private = await cluster.upload(make_jpeg(seed=302), client_ip=CLIENT, visibility="private")
    for image in (up, private):
        await cluster.wait_ready(image["image_id"])
    image_id = up["image_id"]
    port = cluster.node_settings[NODE].node.port
    path = f"/i/{image_id}/w300.jpg"

    # The first GET is a miss (aiohttp builds and keeps the file); then the same request twice, pipelined, is
    # answered by the lane, and a request the lane does not take (a query) by aiohttp, on the same connection.
    (miss,) = await _raw(port, _get(path), 1)
    assert miss[0] == 200 and "server" in miss[1]
    answers = await _raw(port, _get(path) + _get(path) + _get(path + "?via=aiohttp"), 3)
    (s1, h1, b1), (s2, h2, b2), (s3, h3, b3) = answers
    assert s1 == s2 == s3 == 200 and b1 == b2 == b3 == miss[2] and b1[:2] == b"\xff\xd8"
    assert "server" not in h1 and "server" not in h2, h1  # the lane's
    assert "server" in h3  # aiohttp's
    assert _fixed(h1) == _fixed(h3) == _fixed(miss[1]), (h1, h3)
    assert h1["x-request-id"] != h2["x-request-id"]

    # 304, HEAD and a caller's request id through the lane; a Range handed on (206 from aiohttp).
    etag = h1["etag"]
    (nm,) = await _raw(port, _get(path, f"If-None-Match: {etag}"), 1)
    assert nm[0] == 304 and nm[2] == b"" and nm[1]["etag"] == etag and "server" not in nm[1]
    assert "content-type" not in nm[1]
    head = await _raw(port, _get(path, "X-Request-Id: lane-abc.1", method="HEAD") + _get(path), 2, heads=(0,))
    assert head[0][0] == 200 and head[0][2] == b"" and int(head[0][1]["content-length"]) == len(b1)
    assert head[0][1]["x-request-id"] == "lane-abc.1"
    assert head[1][2] == b1  # the HEAD sent no body: the next answer starts where it should
    (part,) = await _raw(port, _get(path, "Range: bytes=0-9"), 1)
    assert part[0] == 206 and part[2] == b1[:10] and "server" in part[1]

    # Negotiated: Vary: Accept from the lane as from aiohttp.
    auto = f"/i/{image_id}/w300.auto"
    await _raw(port, _get(auto, "Accept: image/webp"), 1)  # a miss first
    (lane_auto, via_aiohttp) = await _raw(
        port, _get(auto, "Accept: image/webp") + _get(auto + "?x=1", "Accept: image/webp"), 2
    )
    assert "server" not in lane_auto[1] and lane_auto[1]["vary"] == "Accept"
    assert _fixed(lane_auto[1]) == _fixed(via_aiohttp[1]) and lane_auto[1]["content-type"] == "image/webp"

    # Not the lane's: a private image unsigned (403 from aiohttp), an unknown variant (404), another route.
    private_path = f"/i/{private['image_id']}/w300.jpg"
    refused, unknown, health = await _raw(
        port, _get(private_path) + _get(f"/i/{image_id}/w301x.jpg") + _get("/healthz"), 3
    )
    assert refused[0] == 403 and b"signature" in refused[2]
    assert unknown[0] in (400, 404) and health[0] == 200

    # Logged and counted like aiohttp's answers: the route template, status and bytes.
    lines = [r for r in caplog.records if r.name == "minicdn.access" and getattr(r, "path", "") == path]
    fields = [(r.__dict__["status"], r.__dict__["route"], r.__dict__["bytes"]) for r in lines]
    assert (200, "/i/{image_id}/{variant}", len(b1)) in fields and (304, "/i/{image_id}/{variant}", 0) in fields
    assert cluster.session is not None
    async with cluster.session.get(f"{cluster.node_settings[NODE].node.base_url}/metrics") as resp:
        text = await resp.text()
    labels = 'component="storage-node",method="GET",route="/i/{image_id}/{variant}",status="304"'
    found = re.search(re.escape(f"minicdn_http_requests_total{{{labels}}}") + r" (\S+)", text)
    assert found is not None and float(found[1]) >= 1, text

    # Deleted: the lane stops at once (the gate forgets the image), and aiohttp answers 404.
    status, body = await cluster.api("DELETE", f"/v1/images/{image_id}")
    assert status == 202, body
    gate = cluster.apps[NODE][node_keys.GATE]
    for _ in range(100):
        if not gate.is_ready(image_id):
            break
        await asyncio.sleep(0.05)
    (gone,) = await _raw(port, _get(path), 1)
    assert gone[0] == 404 and "server" in gone[1]


async def test_a_stopping_node_closes_lane_connections_after_the_answer(cluster: TestCluster) -> None:
    up = await cluster.upload(make_jpeg(seed=303), client_ip=CLIENT)
    await cluster.wait_ready(up["image_id"])
    port = cluster.node_settings[NODE].node.port
    path = f"/i/{up['image_id']}/w300.jpg"
    await _raw(port, _get(path), 1)  # a miss: the file is kept
    status = cluster.apps[NODE][node_keys.STATUS]
    status.stopping = True
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_get(path) + _get(path))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)  # to EOF: the node closes after the first answer
        writer.close()
    finally:
        status.stopping = False
    assert data.count(b"HTTP/1.1 200") == 1 and b"Connection: close" in data and b"Server:" not in data


async def test_a_known_lookup_takes_the_query_services_lane_with_aiohttps_document(cluster: TestCluster) -> None:
    up = await cluster.upload(make_jpeg(seed=304), client_ip=CLIENT)
    await cluster.wait_ready(up["image_id"])
    await cluster.wait_replicated(up["image_id"])
    port = int(cluster.query_url.rsplit(":", 1)[1])
    token = cluster.auth["Authorization"]
    path = f"/v1/images/{up['image_id']}/url?w=300&client_ip={CLIENT}"
    auth = f"Authorization: {token}"

    # The first lookup reads Postgres (aiohttp's path); then the lane answers, with the same document as aiohttp's
    # path gives for a request it does not take (a repeated parameter: aiohttp's path reads the first).
    (first,) = await _raw(port, _get(path, auth), 1)
    assert first[0] == 200 and "server" in first[1], first
    lane, via_aiohttp = await _raw(port, _get(path, auth) + _get(path + "&w=300", auth), 2)
    assert lane[0] == via_aiohttp[0] == 200
    assert "server" not in lane[1] and "server" in via_aiohttp[1]
    assert _fixed(lane[1]) == _fixed(via_aiohttp[1])
    assert json.loads(lane[2]) == json.loads(via_aiohttp[2]) == json.loads(first[2])
    assert json.loads(lane[2])["node_id"] == NODE  # the client's region first

    # Not the lane's: a wrong key (401), an unknown image (404). A public image without a key is the lane's too.
    # (One connection each: a request behind one aiohttp is still answering goes to aiohttp.)
    (wrong,) = await _raw(port, _get(path, "Authorization: Bearer mk_nope_nope"), 1)
    (unknown,) = await _raw(port, _get(f"/v1/images/{'a' * 22}/url", auth), 1)
    (anonymous,) = await _raw(port, _get(f"/v1/images/{up['image_id']}/url?w=300"), 1)
    assert wrong[0] == 401 and "server" in wrong[1]
    assert unknown[0] == 404 and "server" in unknown[1]
    assert anonymous[0] == 200 and "server" not in anonymous[1]

    # A revoked key is refused at once, by aiohttp's path (the lane no longer knows it).
    status, created = await cluster.api("POST", "/v1/keys", json={"name": "lane-test"})
    assert status == 201, created
    other = f"Authorization: Bearer {created['api_key']}"
    for _ in range(2):
        (ok,) = await _raw(port, _get(path, other), 1)
        assert ok[0] == 200
    assert "server" not in ok[1]
    status, _ = await cluster.api("DELETE", f"/v1/keys/{created['key_id']}")
    assert status in (200, 204)
    (revoked,) = await _raw(port, _get(path, other), 1)
    assert revoked[0] == 401 and "server" in revoked[1]
