"""A node's object store on disk (storage_node.objects.store): layout, sidecars, usage, dedupe links."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import NotFound
from storage_node.objects.store import ORIGINAL, ObjectMeta, Store

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
def test_lost_sidecar_is_rebuilt_from_the_original(tmp_path: Path, testdata: Path, damage: str) -> None:
    import hashlib

    data = (testdata / "coins_gray.png").read_bytes()
    store = Store(tmp_path)
    store.prepare()
    tmp = store.new_tmp_path()
    tmp.write_bytes(data)
    store.commit_original(tmp, IMAGE_ID, ObjectMeta(hashlib.sha256(data).hexdigest(), "image/png", len(data)))
    sidecar = store.path_for(IMAGE_ID, "meta.json")
    if damage == "missing":
        sidecar.unlink()
    elif damage == "torn":
        sidecar.write_text('{"sha256": "ab')
    else:
        sidecar.write_text('{"sha256": "00", "content_type": "image/png", "bytes": 3}')
    fresh = Store(tmp_path)  # as after a crash: nothing cached
    assert fresh.meta(IMAGE_ID) == ObjectMeta(hashlib.sha256(data).hexdigest(), "image/png", len(data))
    assert Store(tmp_path).meta(IMAGE_ID) == fresh.meta(IMAGE_ID)  # rewritten on disk


def test_dedupe_links_share_bytes_and_survive_either_delete(tmp_path: Path) -> None:
    import os

    from storage_node.objects.store import ORIGINAL, ObjectMeta, Store

    store = Store(tmp_path / "data")
    store.prepare()
    data = b"\xff\xd8\xff" + os.urandom(5000)
    tmp = store.new_tmp_path()
    tmp.write_bytes(data)
    meta = ObjectMeta("ab" * 32, "image/jpeg", len(data))
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
