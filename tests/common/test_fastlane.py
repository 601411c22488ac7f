"""The fast lane in front of aiohttp (``common.fastlane``) on a real socket, with a tiny app: what the route
takes is answered by the lane, everything else by aiohttp on the same connection and in order, however the bytes
arrive (a head split over several writes, pipelined requests, a body, bytes that are not HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from common.fastlane import Answer, FastLaneSite, Head, Lane, bodyless, parse_head
from common.procs import free_port


def _route(head: Head) -> Answer | None:
    if head.path != "/fast":
        return None
    return Answer(200, b"Content-Type: text/plain\r\n", "/fast", body=b"lane " + head.query.encode())


async def _fast(request: web.Request) -> web.Response:  # what aiohttp's path answers for the lane's route
    return web.Response(text=f"aiohttp {request.query_string}")


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(0.05)  # a request aiohttp still has in hand when the next one arrives
    return web.Response(text=f"aiohttp {request.method} {await request.text()}")


@pytest.fixture
async def port() -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_route("*", "/slow", _slow)
    app.router.add_get("/fast", _fast)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    recorded: list[str] = []
    lane = Lane(_route, lambda head, answer, rid, seconds: recorded.append(head.path))
    await FastLaneSite(runner, "127.0.0.1", port, lane).start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def _answers(port: int, *steps: tuple[bytes, int]) -> list[bytes]:
    """On one connection, for each step: write its bytes, then read its number of answers (status line | body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        bodies = []
        for data, count in steps:
            writer.write(data)
            await writer.drain()
            for _ in range(count):
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                lines = head.split(b"\r\n")
                length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
                bodies.append(lines[0] + b" | " + await asyncio.wait_for(reader.readexactly(length), 5))
            await asyncio.sleep(0.02)
        return bodies
    finally:
        writer.close()


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


async def test_requests_are_answered_in_order_by_the_lane_or_aiohttp(port: int) -> None:
    # A head split mid-header; then pipelined: the lane's, aiohttp's (slow), and one aiohttp still has a request
    # before (aiohttp's: answers never overtake); once aiohttp is done, the lane's again on the same connection.
    split = _get("/fast?a")
    assert await _answers(port, (split[:20], 0), (split[20:], 1)) == [b"HTTP/1.1 200 OK | lane a"]
    pipelined = _get("/fast?1") + _get("/slow") + _get("/fast?2")
    assert await _answers(port, (pipelined, 3), (_get("/fast?3"), 1)) == [
        b"HTTP/1.1 200 OK | lane 1",
        b"HTTP/1.1 200 OK | aiohttp GET ",
        b"HTTP/1.1 200 OK | aiohttp 2",
        b"HTTP/1.1 200 OK | lane 3",
    ]
    # A body (an upload) makes the rest of the connection aiohttp's: the lane's route is not asked again.
    post = b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    assert await _answers(port, (post, 1), (_get("/fast?4"), 1)) == [
        b"HTTP/1.1 200 OK | aiohttp POST hello",
        b"HTTP/1.1 200 OK | aiohttp 4",
    ]


async def test_bytes_that_are_not_http_go_to_aiohttp_at_once(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_get("/fast?x") + b"\xff\xd8\xff garbage")
        answer = await asyncio.wait_for(reader.read(), 5)  # to EOF: aiohttp refuses and closes
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK") and b"\r\n\r\nlane x" in answer and b" 400 Bad Request" in answer


def test_heads_the_lane_may_read() -> None:
    head = parse_head(b"GET /fast?q=1 HTTP/1.1\r\nHost: x\r\nAccept: image/webp", "10.0.0.1")
    assert head == Head("GET", "/fast", "q=1", {"host": "x", "accept": "image/webp"}, "10.0.0.1")
    for refused in (
        b"POST /fast HTTP/1.1\r\nHost: x",  # a method with a body
        b"GET /fast HTTP/1.0\r\nHost: x",  # another version
        b"GET /fast HTTP/1.1\r\nHost: x\r\nHost: y",  # a repeated header
        b"GET /fast HTTP/1.1\r\nContent-Length: 3",  # a body
        b"GET /fast HTTP/1.1\r\n Host: x",  # a folded or malformed line
        b"GET fast HTTP/1.1\r\nHost: x",  # not a path
    ):
        assert parse_head(refused) is None, refused
    assert bodyless(b"GET /slow HTTP/1.1\r\nContent-Length: 0")
    assert not bodyless(b"PUT /slow HTTP/1.1\r\nContent-Length: 5")
    assert not bodyless(b"PUT /slow HTTP/1.1\r\nTransfer-Encoding: chunked")
    assert not bodyless(b"GARBAGE")
