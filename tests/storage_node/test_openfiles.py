"""The read path's open-file cache (storage_node.objects.openfiles), its checks on a hit (storage_node.fastpath) and
its response (storage_node.sendfile): bounded, reference counted, dropped by every change the store makes, and
answering 200/206/304/HEAD/416 from a cached descriptor."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from common.errors import MinicdnError
from storage_node import fastpath
from storage_node.objects.openfiles import OpenFile, OpenFiles
from storage_node.objects.store import ORIGINAL, ObjectMeta, Store

A = "abcdefghijklmnopqrstuv"
B = "bcdefghijklmnopqrstuvw"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def cache_file(store: Store, image_id: str, name: str) -> OpenFile:
    """What a miss does: open the stored file and keep it (the caller's reference released)."""
    path = store.original_path(image_id) if name == ORIGINAL else store.path_for(image_id, name)
    fobj = path.open("rb")
    held = fastpath.keep(store.open_files, store.open_files.epoch, (image_id, name), fobj, path.stat().st_size, "e", {})
    held.release()
    return held


def put_image(store: Store, image_id: str, data: bytes, variants: dict[str, bytes] | None = None) -> ObjectMeta:
    meta = ObjectMeta(hashlib.sha256(data).hexdigest(), "image/jpeg", len(data))
    tmp = store.new_tmp_path()
    tmp.write_bytes(data)
    store.commit_original(tmp, image_id, meta)
    for name, body in (variants or {}).items():
        tmp = store.new_tmp_path()
        tmp.write_bytes(body)
        store.commit(tmp, image_id, name)
    return meta


def test_the_cache_is_bounded_and_closes_what_it_evicts(tmp_path: Path) -> None:
    files = OpenFiles(3)
    paths = []
    for i in range(10):
        paths.append(tmp_path / f"f{i}")
        paths[-1].write_bytes(b"x" * i)
    before = open_fds()
    held = []
    for i, path in enumerate(paths):
        held.append(fastpath.keep(files, files.epoch, (A, f"w{i}.jpg"), path.open("rb"), i, "e", {}))
        held[-1].release()
    assert len(files) == 3 and open_fds() == before + 3  # the seven least recently used are closed
    assert all(h.fobj.closed for h in held[:7]) and not any(h.fobj.closed for h in held[7:])
    assert files.get((A, "w9.jpg")) is held[9]
    held[9].release()
    files.clear()
    assert open_fds() == before


def test_a_dropped_entry_stays_open_until_its_last_response_is_done(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"bytes")
    files = OpenFiles(8)
    keep = fastpath.keep(files, files.epoch, (A, "w1.jpg"), (tmp_path / "f").open("rb"), 5, "e", {})
    keep.release()
    sending = files.get((A, "w1.jpg"))  # a response in flight holds it
    assert sending is not None
    files.drop(A)
    assert files.get((A, "w1.jpg")) is None
    assert not sending.fobj.closed and os.pread(sending.fobj.fileno(), 5, 0) == b"bytes"
    sending.release()
    assert sending.fobj.closed


def test_a_file_opened_before_a_drop_is_not_kept(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"old")
    files = OpenFiles(8)
    epoch = files.epoch
    fobj = (tmp_path / "f").open("rb")
    files.drop(A, "w1.jpg")  # e.g. an eviction between the open and the put
    held = fastpath.keep(files, epoch, (A, "w1.jpg"), fobj, 3, "e", {})
    assert len(files) == 0 and not fobj.closed  # the request that opened it still sends it...
    held.release()
    assert fobj.closed  # ...and nothing else keeps it


def test_every_change_of_the_store_drops_the_image_entries(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.prepare()
    before = open_fds()
    put_image(store, A, b"a" * 100, {"w1.jpg": b"v1", "w2.jpg": b"v2"})
    put_image(store, B, b"b" * 100, {"w1.jpg": b"v1"})

    def cached() -> set[tuple[str, str]]:
        return {key for key in [(i, n) for i in (A, B) for n in (ORIGINAL, "w1.jpg", "w2.jpg")] if _has(store, key)}

    def fill() -> None:
        for key in [(A, ORIGINAL), (A, "w1.jpg"), (A, "w2.jpg"), (B, ORIGINAL), (B, "w1.jpg")]:
            cache_file(store, *key)

    fill()
    assert store.evict_variant(A, "w1.jpg", idle_s=0, now=1e12) == 2
    assert cached() == {(A, ORIGINAL), (A, "w2.jpg"), (B, ORIGINAL), (B, "w1.jpg")}
    tmp = store.new_tmp_path()
    tmp.write_bytes(b"V2")
    store.commit(tmp, A, "w2.jpg")  # a variant written again: the descriptor is of the old file
    assert (A, "w2.jpg") not in cached()
    store.mark_corrupt(B)
    assert cached() == {(A, ORIGINAL)}
    fill_b = cache_file(store, B, "w1.jpg")
    assert _has(store, (B, "w1.jpg"))
    store.remove_variants(B)
    assert not _has(store, (B, "w1.jpg")) and fill_b.fobj.closed
    cache_file(store, A, "w2.jpg")
    store.forget(A)  # another process changed its files
    assert cached() == set()
    cache_file(store, A, ORIGINAL)
    store.remove_image(A)  # a delete, a rejection
    assert cached() == set()
    assert open_fds() == before  # every dropped descriptor is closed


def _has(store: Store, key: tuple[str, str]) -> bool:
    held = store.open_files.get(key)
    if held is None:
        return False
    held.release()
    return True


def test_a_hit_is_checked_like_a_miss(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.prepare()
    meta = put_image(store, A, b"a" * 100, {"w1.jpg": b"v1"})
    assert store.meta(A) == meta
    cache_file(store, A, ORIGINAL)
    cache_file(store, A, "w1.jpg")
    held = fastpath.hit(store, A, ORIGINAL, meta)  # verified at commit, unchanged since
    assert held is not None
    held.release()
    # Changed under the cache by someone else (no drop told it): an unlinked variant, a grown original.
    os.unlink(store.path_for(A, "w1.jpg"))
    assert fastpath.hit(store, A, "w1.jpg", meta) is None and not _has(store, (A, "w1.jpg"))
    with store.original_path(A).open("ab") as out:
        out.write(b"!")
    assert fastpath.hit(store, A, ORIGINAL, meta) is None and not _has(store, (A, ORIGINAL))
    # Same size, but written since it was hashed (its ctime moved): hashed again on the miss path, not sent here.
    with store.original_path(A).open("r+b") as out:
        out.truncate(100)
    cache_file(store, A, ORIGINAL)
    assert fastpath.hit(store, A, ORIGINAL, meta) is None


def test_the_sweep_closes_files_removed_elsewhere(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.prepare()
    put_image(store, A, b"a" * 100, {"w1.jpg": b"v1", "w2.jpg": b"v2"})
    cache_file(store, A, "w1.jpg")
    cache_file(store, A, "w2.jpg")
    os.unlink(store.path_for(A, "w1.jpg"))  # e.g. another process of the node evicted it
    assert store.open_files.sweep() == 1 and _has(store, (A, "w2.jpg")) and not _has(store, (A, "w1.jpg"))


async def test_responses_from_a_cached_descriptor(tmp_path: Path) -> None:
    body = os.urandom(8_000_000)  # more than a socket takes at once: the rest goes by loop.sendfile
    (tmp_path / "f").write_bytes(body)
    files = OpenFiles(4)
    headers = {"Content-Type": "image/jpeg", "Cache-Control": "public"}
    keep = fastpath.keep(files, files.epoch, (A, "w1.jpg"), (tmp_path / "f").open("rb"), len(body), "tag", headers)
    keep.release()

    async def handler(request: web.Request) -> web.StreamResponse:
        held = files.get((A, "w1.jpg"))
        assert held is not None
        try:
            return fastpath.respond(request, held, vary=request.query.get("vary") == "1")
        except MinicdnError as exc:
            return web.Response(status=exc.status, headers=exc.headers)

    app = web.Application()
    app.router.add_route("*", "/", handler)
    async with TestClient(TestServer(app)) as client:
        for _ in range(3):  # one descriptor, several responses on one connection (keep-alive)
            resp = await client.get("/")
            assert resp.status == 200 and await resp.read() == body
            assert resp.headers["ETag"] == '"tag"' and resp.headers["Accept-Ranges"] == "bytes"
            assert resp.headers["Content-Type"] == "image/jpeg" and "Vary" not in resp.headers
        resp = await client.get("/", headers={"Range": "bytes=10-19"})
        assert resp.status == 206 and await resp.read() == body[10:20]
        assert resp.headers["Content-Range"] == f"bytes 10-19/{len(body)}"
        resp = await client.get("/", headers={"Range": "bytes=-5"})
        assert resp.status == 206 and await resp.read() == body[-5:]
        resp = await client.get("/", headers={"Range": "bytes=5-2"})  # not a range we honour: the whole file
        assert resp.status == 200 and await resp.read() == body
        resp = await client.get("/", headers={"Range": f"bytes={len(body)}-"})
        assert resp.status == 416 and resp.headers["Content-Range"] == f"bytes */{len(body)}"
        resp = await client.head("/?vary=1")
        assert resp.status == 200 and await resp.read() == b"" and int(resp.headers["Content-Length"]) == len(body)
        assert resp.headers["Vary"] == "Accept"
        resp = await client.get("/", headers={"If-None-Match": '"tag"'})
        assert resp.status == 304 and await resp.read() == b"" and resp.headers["ETag"] == '"tag"'
        assert "Content-Type" not in resp.headers and resp.headers["Cache-Control"] == "public"
    held = files.get((A, "w1.jpg"))
    assert held is not None and held.refs == 2  # the cache's and ours: every response gave its reference back
    held.release()


@pytest.mark.parametrize("size", [0, -1])
def test_a_cache_of_no_size_keeps_nothing(tmp_path: Path, size: int) -> None:
    (tmp_path / "f").write_bytes(b"x")
    files = OpenFiles(size)
    held = fastpath.keep(files, files.epoch, (A, "w1.jpg"), (tmp_path / "f").open("rb"), 1, "e", {})
    assert len(files) == 0
    held.release()
    assert held.fobj.closed
