"""A node's object store on disk (storage_node.objects.store): layout, sidecars, usage, dedupe links."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from common.errors import NotFound
from storage_node.objects.store import ORIGINAL, ObjectMeta, SidecarLost, Store

IMAGE_ID = "abcdefghijklmnopqrstuv"


def test_commit_layout_meta_and_usage(tmp_path: Path) -> None:
    store = Store(tmp_path, capacity_bytes=10_000)
    store.prepare()
    tmp = store.new_tmp_path()
    tmp.write_bytes(b"x" * 1000)
    dest = store.commit_original(tmp, IMAGE_ID, ObjectMeta("ab" * 32, "image/jpeg", 1000))
    assert dest.read_bytes() == b"x" * 1000 and not tmp.exists()
    assert dest.parent.parent.parent.parent == store.objects  # objects/aa/bb/<id>/original
    usage = store.usage()
    assert usage.objects == 1 and usage.used_bytes > 1000 and usage.capacity_bytes == 10_000
    assert usage.free_bytes == 10_000 - usage.used_bytes
    fresh = Store(tmp_path, capacity_bytes=10_000)  # a restart counts what is on disk
    fresh.prepare()
    assert fresh.usage() == usage
    assert fresh.meta(IMAGE_ID) == ObjectMeta("ab" * 32, "image/jpeg", 1000)
    fresh.remove_image(IMAGE_ID)
    assert fresh.meta(IMAGE_ID) is None and fresh.usage().objects == 0 and fresh.usage().used_bytes == 0


def test_prepare_drops_interrupted_uploads(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.prepare()
    leftover = store.new_tmp_path()
    leftover.write_bytes(b"half an upload")
    Store(tmp_path).prepare()
    assert not leftover.exists()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../original"])
def test_names_cannot_escape(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        Store(tmp_path).path_for(IMAGE_ID, name)


def test_bad_ids_never_reach_the_disk(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        Store(tmp_path).path_for("../../../etc/passwd", ORIGINAL)


@pytest.mark.parametrize("damage", ["missing", "torn", "wrong"])
def test_a_lost_sidecar_is_restored_from_the_record_never_from_the_bytes(
    tmp_path: Path, testdata: Path, damage: str
) -> None:
    data = (testdata / "coins_gray.png").read_bytes()
    record = ObjectMeta(hashlib.sha256(data).hexdigest(), "image/png", len(data))
    store = Store(tmp_path)
    store.prepare()
    tmp = store.new_tmp_path()
    tmp.write_bytes(data)
    store.commit_original(tmp, IMAGE_ID, record)
    original = store.path_for(IMAGE_ID, ORIGINAL)
    original.write_bytes(data[: len(data) // 2])  # the bytes are damaged too: they must not become the record
    sidecar = store.path_for(IMAGE_ID, "meta.json")
    if damage == "missing":
        sidecar.unlink()
    elif damage == "torn":
        sidecar.write_text('{"sha256": "ab')
    else:
        sidecar.write_text('{"sha256": "00", "content_type": "image/png", "bytes": 3}')
    fresh = Store(tmp_path)  # as after a crash: nothing cached
    with pytest.raises(SidecarLost):
        fresh.meta(IMAGE_ID)
    assert not sidecar.exists() or damage != "missing"  # nothing was written from the bytes
    private = ObjectMeta(record.sha256, record.content_type, record.bytes, private=True)
    assert fresh.restore_meta(IMAGE_ID, private) == private  # the record, as Postgres holds it
    assert Store(tmp_path).meta(IMAGE_ID) == private  # written on disk, the private marker too
    assert original.stat().st_size != record.bytes  # still damaged: for the checks on serve to refuse


def test_corrupt_copies_are_remembered_until_a_verified_copy_replaces_them(tmp_path: Path) -> None:
    from storage_node.objects.verify import stamp_of

    store = Store(tmp_path)
    store.prepare()
    data = b"\xff\xd8\xff" + bytes(range(256)) * 8
    record = ObjectMeta(hashlib.sha256(data).hexdigest(), "image/jpeg", len(data))
    tmp = store.new_tmp_path()
    tmp.write_bytes(data)
    dest = store.commit_original(tmp, IMAGE_ID, record)
    assert store.verified_stamp(IMAGE_ID) == stamp_of(dest.stat())  # committed bytes are verified bytes
    for name in ("w300.webp", "thumb.jpg"):
        variant = store.new_tmp_path()
        variant.write_bytes(b"v" * 100)
        store.commit(variant, IMAGE_ID, name)
        store.note_variant(IMAGE_ID, name)
    used = store.usage().used_bytes

    assert store.mark_corrupt(IMAGE_ID) and not store.mark_corrupt(IMAGE_ID)  # reported once
    assert store.is_corrupt(IMAGE_ID) and store.cached_meta(IMAGE_ID) is None
    assert store.remove_variants(IMAGE_ID) == 200
    assert sorted(p.name for p in store.image_dir(IMAGE_ID).iterdir()) == ["meta.json", ORIGINAL]
    assert store.usage().used_bytes == used - 200 and store.take_variant_bytes() == {IMAGE_ID: 0}
    assert not store.has_variant(IMAGE_ID, "w300.webp")

    tmp = store.new_tmp_path()
    tmp.write_bytes(data)
    store.commit_original(tmp, IMAGE_ID, record)  # a verified copy replaces it
    assert not store.is_corrupt(IMAGE_ID) and store.cached_meta(IMAGE_ID) == record
    store.mark_corrupt(IMAGE_ID)
    store.remove_image(IMAGE_ID)
    assert not store.is_corrupt(IMAGE_ID)


def test_a_copy_replaced_by_another_process_is_noticed_and_a_damaged_one_is_left_alone(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.prepare()
    data = b"\xff\xd8\xff" + bytes(range(256)) * 8
    record = ObjectMeta(hashlib.sha256(data).hexdigest(), "image/jpeg", len(data))
    tmp = store.new_tmp_path()
    tmp.write_bytes(data)
    dest = store.commit_original(tmp, IMAGE_ID, record)
    dest.write_bytes(data[:100])  # damaged
    assert store.mark_corrupt(IMAGE_ID, store.original_stamp(IMAGE_ID))
    store.note_read(IMAGE_ID, ORIGINAL, now=dest.stat().st_mtime + 60)
    assert store.flush_reads(keep_marks_s=3600) == 0  # its stamp stays the damaged file's
    assert not store.replaced_since_corrupt(IMAGE_ID) and store.is_corrupt(IMAGE_ID)

    other = Store(tmp_path)  # a stand-alone replicator: its own process, its own memory
    tmp = other.new_tmp_path()
    tmp.write_bytes(data)
    other.commit_original(tmp, IMAGE_ID, record)
    assert store.is_corrupt(IMAGE_ID)  # memory only: this process has not looked yet
    assert store.replaced_since_corrupt(IMAGE_ID) and not store.is_corrupt(IMAGE_ID)


def test_a_damaged_source_is_never_linked(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.prepare()
    data = b"\xff\xd8\xff" + bytes(range(256)) * 8
    meta = ObjectMeta(hashlib.sha256(data).hexdigest(), "image/jpeg", len(data))
    a, b = "aaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbb"
    tmp = store.new_tmp_path()
    tmp.write_bytes(data)
    store.commit_original(tmp, a, meta)
    flipped = bytearray(data)
    flipped[100] ^= 1
    store.path_for(a, ORIGINAL).write_bytes(bytes(flipped))  # same size, other bytes
    assert store.link_copy(a, b, meta) is None and store.meta(b) is None
    assert list(store.tmp.iterdir()) == []  # the trial link is gone


def test_dedupe_links_share_bytes_and_survive_either_delete(tmp_path: Path) -> None:
    import os

    from storage_node.objects.store import ORIGINAL, ObjectMeta, Store

    store = Store(tmp_path / "data")
    store.prepare()
    data = b"\xff\xd8\xff" + os.urandom(5000)
    tmp = store.new_tmp_path()
    tmp.write_bytes(data)
    meta = ObjectMeta(hashlib.sha256(data).hexdigest(), "image/jpeg", len(data))  # a link is hashed first
    a, b = "aaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbb"
    store.commit_original(tmp, a, meta)
    used = store.usage().used_bytes
    assert store.link_copy(a, b, meta) is not None
    assert store.usage().used_bytes == used + store.path_for(b, "meta.json").stat().st_size  # no second copy
    assert os.stat(store.path_for(a, ORIGINAL)).st_ino == os.stat(store.path_for(b, ORIGINAL)).st_ino
    assert store.usage().objects == 2
    store.remove_image(a)
    assert store.path_for(b, ORIGINAL).read_bytes() == data
    fresh = Store(tmp_path / "data")
    fresh.prepare()
    assert fresh.usage().used_bytes == store.usage().used_bytes
    assert store.link_copy(a, "cccccccccccccccccccccc", meta) is None  # the source is gone: caller stores bytes
    assert store.link_copy(b, "cccccccccccccccccccccc", ObjectMeta("x", "image/jpeg", 1)) is None  # size mismatch
