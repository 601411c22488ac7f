"""An original's bytes against its record (storage_node.objects.verify): the check on every serve, the full hash
of an open descriptor, the verified private copy a decoder reads, and a real sandbox worker and renderer
refusing to decode a damaged original (OriginalMismatch, never a render failure)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from common.variants import parse_variant
from storage_node.objects.store import ORIGINAL, ObjectMeta, Store
from storage_node.objects.verify import OriginalMismatch, check_open, serve_check, stamp_of, verified_copy
from storage_node.render import Renderer
from storage_node.sandbox import SandboxPool

IMAGE_ID = "abcdefghijklmnopqrstuv"


def record_of(data: bytes, content_type: str = "image/png") -> ObjectMeta:
    return ObjectMeta(hashlib.sha256(data).hexdigest(), content_type, len(data))


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_serve_check_refuses_another_size_and_asks_for_a_hash_after_any_write(tmp_path: Path) -> None:
    path = tmp_path / "original"
    path.write_bytes(b"x" * 1000)
    record = record_of(b"x" * 1000)
    st = os.stat(path)
    assert serve_check(st, record, None) is True  # never verified: hash before sending
    assert serve_check(st, record, stamp_of(st)) is False  # verified and unchanged: send as is
    flip(path, 10)  # same size, rewritten: its ctime moves
    assert serve_check(os.stat(path), record, stamp_of(st)) is True
    path.write_bytes(b"x" * 999)
    with pytest.raises(OriginalMismatch) as caught:
        serve_check(os.stat(path), record, stamp_of(st))
    assert (caught.value.what, caught.value.expected, caught.value.actual) == ("size", "1000 bytes", "999 bytes")


def test_check_open_hashes_the_descriptor_it_is_given_and_leaves_its_offset(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several hash blocks, not a whole number of them
    path = tmp_path / "original"
    path.write_bytes(data)
    record = record_of(data)
    with path.open("rb") as fobj:
        st = os.fstat(fobj.fileno())
        assert check_open(fobj.fileno(), st, record, None) == stamp_of(st)
        assert fobj.read() == data  # hashed with pread: the descriptor still sends from the start
    flip(path, len(data) // 2)
    with path.open("rb") as fobj, pytest.raises(OriginalMismatch) as caught:
        check_open(fobj.fileno(), os.fstat(fobj.fileno()), record, stamp_of(st))
    assert caught.value.what == "sha256" and caught.value.expected == record.sha256
    assert caught.value.actual == hashlib.sha256(path.read_bytes()).hexdigest()


def test_verified_copy_is_the_checked_bytes_and_nothing_can_change_it(tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 5)
    path = tmp_path / "original"
    path.write_bytes(data)
    record = record_of(data)
    with verified_copy(path, record.sha256, record.bytes) as copy:
        flip(path, 0)  # the file changes after the check: what the decoder reads does not
        assert copy.read_bytes() == data
        with pytest.raises(PermissionError):  # sealed against writes
            copy.write_bytes(b"x")
    assert not copy.exists()  # closed with the context


@pytest.mark.parametrize(
    ("damage", "what"), [("truncated", "size"), ("grown", "size"), ("flipped", "sha256"), ("empty", "size")]
)
def test_verified_copy_refuses_damaged_bytes(tmp_path: Path, damage: str, what: str) -> None:
    data = os.urandom(1024 * 1024 + 3)
    path = tmp_path / "original"
    record = record_of(data)
    damaged = {
        "truncated": data[:1000],
        "grown": data + os.urandom(3 * 1024 * 1024),
        "flipped": bytes([data[0] ^ 0x80]) + data[1:],
        "empty": b"",
    }[damage]
    path.write_bytes(damaged)
    with pytest.raises(OriginalMismatch) as caught, verified_copy(path, record.sha256, record.bytes):
        pytest.fail("a damaged original was handed on")
    assert caught.value.what == what


async def test_a_damaged_original_is_never_decoded_by_a_variant_build(tmp_path: Path, testdata: Path) -> None:
    data = (testdata / "coins_gray.png").read_bytes()
    store = Store(tmp_path)
    store.prepare()
    tmp = store.new_tmp_path()
    tmp.write_bytes(data)
    store.commit_original(tmp, IMAGE_ID, record_of(data))
    renderer = Renderer(store, 1)
    try:
        good = await renderer.ensure(IMAGE_ID, parse_variant("w150.webp"))  # the check passes good bytes
        assert good.read_bytes()[8:12] == b"WEBP"
        original = store.path_for(IMAGE_ID, ORIGINAL)
        original.write_bytes(data[: len(data) // 2])  # truncated: libvips would fail on it, with a traceback
        with pytest.raises(OriginalMismatch) as caught:
            await renderer.ensure(IMAGE_ID, parse_variant("w100.webp"))
        assert caught.value.what == "size"
        original.write_bytes(bytes([data[0]]) + data[1:-1] + bytes([data[-1] ^ 1]))  # same size, last byte
        with pytest.raises(OriginalMismatch) as caught:  # (a PNG decodes without its IEND: only a hash tells)
            await renderer.ensure(IMAGE_ID, parse_variant("w100.png"))
        assert caught.value.what == "sha256"
    finally:
        await renderer.close()
    assert not store.path_for(IMAGE_ID, "w100.webp").exists() and not store.path_for(IMAGE_ID, "w100.png").exists()
    assert list(store.tmp.iterdir()) == []  # nothing left behind


async def test_processing_decodes_only_the_recorded_bytes(tmp_path: Path, testdata: Path) -> None:
    data = (testdata / "coins_gray.png").read_bytes()
    path = tmp_path / "original"
    path.write_bytes(data)
    record = record_of(data)
    job = {"path": str(path), "sha256": record.sha256, "bytes": record.bytes, "max_pixels": 10**8}
    job |= {"max_frames": 500, "keep_gps": False, "eager": [["thumb.webp", str(tmp_path / "thumb.webp")]]}
    pool = SandboxPool(1, 1536, 30)
    try:
        assert (await pool.run(job))["format"] == "png"
        flip(path, len(data) // 2)
        (tmp_path / "thumb.webp").unlink()
        with pytest.raises(OriginalMismatch):
            await pool.run(job)
        assert not (tmp_path / "thumb.webp").exists()  # no eager variant from bad bytes
        assert (await pool.run({**job, "path": str(testdata / "coins_gray.png")}))["format"] == "png"  # worker fine
    finally:
        await pool.close()
