"""Scrubbing on one node's disk (replicator.scrub): hashing, walking the object layout, and a pass's accounting.
Repair from a peer (database and HTTP) is covered end to end in tests/integration/test_scrub.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from common.ids import new_image_id
from replicator.jobs import ReplicatorContext
from replicator.scrub import BLOCK, Scrubber, iter_image_ids, sha256_file
from storage_node.objects.store import ORIGINAL, ObjectMeta, Store


def put(store: Store, data: bytes) -> str:
    image_id = new_image_id()
    tmp = store.new_tmp_path()
    tmp.write_bytes(data)
    store.commit_original(tmp, image_id, ObjectMeta(hashlib.sha256(data).hexdigest(), "image/jpeg", len(data)))
    return image_id


def test_sha256_file_spans_blocks_and_tolerates_a_vanished_file(tmp_path: Path) -> None:
    data = bytes(range(256)) * (BLOCK * 2 // 256 + 7)  # more than two blocks, not a whole number of them
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(tmp_path / "deleted meanwhile") is None


def test_iter_image_ids_finds_originals_only(ctx: ReplicatorContext) -> None:
    store = ctx.store
    ids = {put(store, f"image {i}".encode()) for i in range(5)}
    variants_only = new_image_id()  # an image directory whose original is gone (a delete half done)
    store.image_dir(variants_only).mkdir(parents=True)
    (store.image_dir(variants_only) / "w200.webp").write_bytes(b"v")
    (store.objects / "stray-file").write_bytes(b"")  # not a shard directory
    assert sorted(iter_image_ids(store.objects)) == sorted(ids)
    assert list(iter_image_ids(store.root / "never-created")) == []


async def test_a_pass_checks_every_original_and_hands_mismatches_to_repair(
    ctx: ReplicatorContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ctx.store
    put(store, b"good bytes")
    flipped = put(store, b"bytes to flip")
    gone = put(store, b"deleted during the pass")
    store.path_for(flipped, ORIGINAL).write_bytes(b"BYTES TO FLIP")  # same size, other hash
    scrubber = Scrubber(ctx, bytes_per_s=0, interval_s=60)
    repairs: list[tuple[str, str]] = []

    async def repair(image_id: str, actual: str) -> int:
        repairs.append((image_id, actual))
        return 1

    monkeypatch.setattr(scrubber, "_repair", repair)
    real_sha256_file = sha256_file

    def racing_delete(path: Path) -> str | None:
        if gone in path.parts:
            path.unlink()  # removed between the listing and the hashing: skipped, not counted corrupt
        return real_sha256_file(path)

    monkeypatch.setattr("replicator.scrub.sha256_file", racing_delete)
    result = await scrubber.run_pass()
    assert (result.checked, result.bytes, result.corrupt, result.repaired) == (2, 23, 1, 1)
    assert repairs == [(flipped, hashlib.sha256(b"BYTES TO FLIP").hexdigest())]
    assert scrubber.passes == 1
