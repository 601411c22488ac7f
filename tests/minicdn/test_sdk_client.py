"""The SDK against a scripted peer (a real aiohttp server): retries with backoff on 503, 429 (honouring
`Retry-After`) and dropped connections, none on a refusal, streamed uploads that rewind for a retry and
never send the API key to a node, typed outcomes of the wait, search pagination, and the sync Client."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import sys
import threading
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import minicdn
from minicdn import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InvalidImage,
    InvalidRequest,
    NotFound,
    Quarantined,
    RateLimited,
    Rejected,
    RetryPolicy,
    Timeout,
    TooLarge,
    Unauthorized,
    Unavailable,
    Unsupported,
)
from minicdn.sdk.sources import CHUNK_BYTES
from tests.minicdn.fakepeer import IMAGE_ID, Answer, FakePeer, TrackingFile, error, image_json

GET_IMAGE = f"GET /v1/images/{IMAGE_ID}"
PUT = f"PUT /upload/{IMAGE_ID}"
FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)


@pytest.fixture
async def peer() -> AsyncIterator[FakePeer]:
    server = await FakePeer().start()
    try:
        yield server
    finally:
        await server.stop()


async def test_retries_503_then_429_honouring_retry_after(peer: FakePeer) -> None:
    peer.script(
        GET_IMAGE,
        error(503, "no_replica", **{"Retry-After": "1"}),
        error(429, "rate_limited", **{"Retry-After": "1"}),
    )
    async with AsyncClient(peer.url, "k", retry=FAST) as cdn:
        image = await cdn.get(IMAGE_ID)
    assert (image.id, image.status, image.width, image.replicas[0].state) == (IMAGE_ID, "ready", 640, "ok")
    times = [s.at for s in peer.requests(GET_IMAGE)]
    assert len(times) == 3
    # The backoff alone would be at most 0.05 s: waiting a second each time is Retry-After at work.
    assert times[1] - times[0] >= 1.0 and times[2] - times[1] >= 1.0


async def test_gives_up_after_the_attempts_with_a_typed_error(peer: FakePeer) -> None:
    peer.script(GET_IMAGE, *[error(503, "no_replica")] * 4)
    async with AsyncClient(peer.url, "k", retry=FAST) as cdn:
        with pytest.raises(Unavailable) as caught:
            await cdn.get(IMAGE_ID)
    assert (caught.value.code, caught.value.status) == ("no_replica", 503)
    assert len(peer.requests(GET_IMAGE)) == FAST.attempts

    peer.script(GET_IMAGE, *[error(429, "rate_limited", **{"Retry-After": "0"})] * 4)
    async with AsyncClient(peer.url, "k", retry=FAST) as cdn:
        with pytest.raises(RateLimited) as limited:
            await cdn.get(IMAGE_ID)
    assert limited.value.retry_after == 0 and len(peer.requests(GET_IMAGE)) == 2 * FAST.attempts


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, "invalid_request", InvalidRequest),
        (401, "unauthorized", Unauthorized),
        (403, "forbidden", Forbidden),
        (404, "not_found", NotFound),
        (409, "not_ready", Conflict),
        (413, "too_large", TooLarge),
        (415, "unsupported_type", Unsupported),
        (422, "invalid_image", InvalidImage),
    ],
)
async def test_a_refusal_is_never_retried(peer: FakePeer, status: int, code: str, kind: type[Exception]) -> None:
    peer.script(GET_IMAGE, error(status, code))
    async with AsyncClient(peer.url, "k", retry=FAST) as cdn:
        with pytest.raises(kind) as caught:
            await cdn.get(IMAGE_ID)
    assert (caught.value.code, caught.value.status) == (code, status)  # type: ignore[attr-defined]
    assert len(peer.requests(GET_IMAGE)) == 1


async def test_a_dropped_connection_is_retried(peer: FakePeer) -> None:
    peer.script(GET_IMAGE, Answer(0, abort=True), Answer(0, abort=True))
    async with AsyncClient(peer.url, "k", retry=FAST) as cdn:
        assert (await cdn.get(IMAGE_ID)).status == "ready"
    assert len(peer.requests(GET_IMAGE)) == 3


async def test_nobody_listening_is_connection_failed() -> None:
    from common.procs import free_port

    async with AsyncClient(f"http://127.0.0.1:{free_port()}", "k", retry=FAST) as cdn:
        with pytest.raises(ConnectionFailed) as caught:
            await cdn.get(IMAGE_ID)
    assert caught.value.code == "connection_failed" and isinstance(caught.value, Unavailable)


async def test_upload_streams_a_file_object_and_rewinds_it_for_a_retried_put(peer: FakePeer) -> None:
    data = os.urandom(3 * CHUNK_BYTES + 123)
    peer.script(PUT, error(503, "unavailable"))
    peer.script(GET_IMAGE, Answer(200, image_json("processing")))
    source = TrackingFile(data)
    progress: list[tuple[int, int | None]] = []
    async with AsyncClient(peer.url, "secret-key", retry=FAST) as cdn:
        image = await cdn.upload(source, tags=["a"], metadata={"k": "v"}, on_progress=lambda *p: progress.append(p))
    assert image.status == "ready"
    puts = peer.requests(PUT)
    assert len(puts) == 2
    for put in puts:  # both attempts sent the whole file from its start
        assert (put.body_bytes, put.body_sha256) == (len(data), hashlib.sha256(data).hexdigest())
        assert put.authorization is None  # the API key never goes to a storage node
    assert peer.requests("POST /v1/uploads")[0].authorization == "Bearer secret-key"
    assert source.reads and max(source.reads) <= CHUNK_BYTES and -1 not in source.reads
    assert progress[-1] == (len(data), len(data)) and len(progress) >= 8  # 4 chunks per attempt


async def test_upload_of_a_path_never_holds_the_file_in_memory(peer: FakePeer, tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    size = 24 * 1024 * 1024
    with path.open("wb") as f:
        for _ in range(size // (1024 * 1024)):
            f.write(os.urandom(1024 * 1024))
    async with AsyncClient(peer.url, "k", retry=FAST) as cdn:
        tracemalloc.start()
        try:
            await cdn.upload(path, wait=False)
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    put = peer.requests(PUT)[0]
    assert put.body_bytes == size and put.body_chunks > 1
    assert peer.requests("POST /v1/uploads")[0].query == {}
    # Client and scripted node together peaked far below the file's size: it went through in chunks.
    assert peak < size / 4, peak


async def test_a_lost_put_answer_then_already_uploaded_counts_as_uploaded(peer: FakePeer) -> None:
    peer.script(PUT, Answer(0, abort=True), error(409, "already_uploaded"))
    async with AsyncClient(peer.url, "k", retry=FAST) as cdn:
        assert (await cdn.upload(b"\xff\xd8\xff" * 10)).status == "ready"
    assert len(peer.requests(PUT)) == 2


async def test_a_pipe_is_sent_once(peer: FakePeer, tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"x" * 1000)
    os.close(write_fd)
    peer.script(PUT, error(503, "unavailable"))
    with os.fdopen(read_fd, "rb") as pipe:
        async with AsyncClient(peer.url, "k", retry=FAST) as cdn:
            with pytest.raises(Unavailable):
                await cdn.upload(pipe)
    put = peer.requests(PUT)
    assert len(put) == 1 and put[0].body_bytes == 1000


@pytest.mark.parametrize(
    ("settled", "kind", "code"),
    [
        ("rejected", Rejected, "rejected"),
        ("quarantined", Quarantined, "quarantined"),
        ("deleted", NotFound, "not_found"),
    ],
)
async def test_the_wait_ends_in_a_typed_outcome(
    peer: FakePeer, settled: str, kind: type[minicdn.MinicdnError], code: str
) -> None:
    peer.script(GET_IMAGE, Answer(200, image_json("uploaded")), Answer(200, image_json("processing")))
    peer.script(GET_IMAGE, Answer(200, image_json(settled, reason="bad pixels")))
    async with AsyncClient(peer.url, "k", retry=FAST) as cdn:
        with pytest.raises(kind) as caught:
            await cdn.upload(b"bytes")
    assert (caught.value.code, caught.value.image_id) == (code, IMAGE_ID)
    if settled != "deleted":
        assert "bad pixels" in str(caught.value)
    assert len(peer.requests(GET_IMAGE)) == 3


async def test_the_wait_times_out(peer: FakePeer) -> None:
    peer.defaults[GET_IMAGE] = Answer(200, image_json("processing"))
    async with AsyncClient(peer.url, "k", retry=FAST) as cdn:
        with pytest.raises(Timeout) as caught:
            await cdn.upload(b"bytes", timeout=0.3)
        image = await cdn.upload(b"bytes", wait=False)
    assert caught.value.image_id == IMAGE_ID and caught.value.status is None
    assert image.status == "processing"


def _pages(peer: FakePeer) -> None:
    peer.script(
        "GET /v1/images",
        Answer(200, {"images": [image_json(image_id="a" * 22), image_json(image_id="b" * 22)], "next_cursor": "c1"}),
        Answer(200, {"images": [image_json(image_id="c" * 22)], "next_cursor": None}),
    )


async def test_search_follows_the_cursor(peer: FakePeer) -> None:
    _pages(peer)
    async with AsyncClient(peer.url, "k") as cdn:
        found = [
            i.id
            async for i in cdn.search(
                page_size=2,
                tags=["cat", "dog"],
                metadata={"album": "x"},
                min_width=10,
                order="oldest",
                format=["jpeg", "png"],
            )
        ]
    assert found == ["a" * 22, "b" * 22, "c" * 22]
    first, second = peer.requests("GET /v1/images")
    assert first.query == {
        "tags": "cat,dog",
        "format": "jpeg,png",
        "meta.album": "x",
        "min_width": "10",
        "order": "oldest",
        "limit": "2",
    }
    assert second.query == {**first.query, "cursor": "c1"}

    _pages(peer)
    async with AsyncClient(peer.url, "k") as cdn:
        assert [i.id async for i in cdn.search(page_size=2, max_results=1)] == ["a" * 22]
    assert peer.requests("GET /v1/images")[-1].query["limit"] == "1"


async def test_the_sync_client_runs_its_own_loop(peer: FakePeer) -> None:
    _pages(peer)
    peer.script(
        f"GET /v1/images/{IMAGE_ID}/srcset",
        Answer(
            200,
            {
                "srcset": "http://n/i/x/w320.jpg 320w, http://n/i/x/w640.jpg 640w",
                "src": "http://n/i/x/w640.jpg",
                "widths": [320, 640],
            },
        ),
    )

    def use_it() -> tuple[str, list[str], minicdn.Srcset, str]:
        with Client(peer.url, "k") as cdn:
            image = cdn.upload(b"abc" * 1000)
            ids = [i.id for i in cdn.search(page_size=2)]
            srcset = cdn.srcset(IMAGE_ID, widths=[320, 640], fmt="webp")
            cdn.delete(IMAGE_ID)
            return image.status, ids, srcset, cdn.query_url

    # The peer serves on this test's loop; the blocking Client must run on another thread.
    status, ids, srcset, url = await asyncio.to_thread(use_it)
    assert status == "ready" and ids == ["a" * 22, "b" * 22, "c" * 22] and url == peer.url
    assert srcset.widths == (320, 640) and srcset.src.endswith("w640.jpg")
    assert 'srcset="http://n/i/x/w320.jpg 320w, http://n/i/x/w640.jpg 640w"' in srcset.img_tag(alt="a cat")
    assert peer.requests(f"GET /v1/images/{IMAGE_ID}/srcset")[0].query == {"widths": "320,640", "fmt": "webp"}
    assert len(peer.requests(f"DELETE /v1/images/{IMAGE_ID}")) == 1


def test_configuration_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINICDN_QUERY_URL", "http://query.example:8080/")
    monkeypatch.setenv("MINICDN_API_KEY", "from-env")
    with Client() as cdn:
        assert cdn.query_url == "http://query.example:8080"
    monkeypatch.delenv("MINICDN_QUERY_URL")
    with pytest.raises(minicdn.MinicdnError) as caught:
        AsyncClient()
    assert caught.value.code == "no_cluster"


def test_import_minicdn_is_cheap_and_exports_the_sdk() -> None:
    import subprocess

    probe = (
        "import sys, minicdn; print('aiohttp' in sys.modules); "
        "from minicdn import Client; print('aiohttp' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-P", "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]
    for name in minicdn.__all__:
        assert getattr(minicdn, name).__name__ == name
    assert (Path(minicdn.__file__).parent / "py.typed").is_file()


def test_a_client_stops_its_thread_when_closed_or_forgotten() -> None:
    def threads() -> int:
        return sum(t.name == "minicdn-client" and t.is_alive() for t in threading.enumerate())

    before = threads()
    cdn = Client("http://127.0.0.1:9", "k")
    assert threads() == before + 1
    cdn.close()
    cdn.close()  # idempotent
    assert threads() == before
    with pytest.raises(RuntimeError):
        cdn.get(IMAGE_ID)
    forgotten = Client("http://127.0.0.1:9", "k")
    assert threads() == before + 1
    del forgotten
    gc.collect()
    assert threads() == before
