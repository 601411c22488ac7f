"""Tiers of a node's store on real files (storage_node.objects.store), the tier policy (storage_node.tier_policy)
and the open that survives a tier switch between resolving a path and opening it (storage_node.tierfile)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from storage_node import tier_policy
from storage_node.objects.openfiles import OpenFile
from storage_node.objects.store import COLD, HOT, ORIGINAL, CopyMismatch, ObjectMeta, Store, StoredFile, TierUsage
from storage_node.sendfile import SendFile
from storage_node.tierfile import open_first

A, B = "aaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbb"


def tiered_store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "hot", capacity_bytes=10**6, cold_dir=tmp_path / "cold", cold_capacity_bytes=10**7)
    store.prepare()
    return store


def put(store: Store, image_id: str, data: bytes) -> ObjectMeta:
    meta = ObjectMeta(hashlib.sha256(data).hexdigest(), "image/jpeg", len(data))
    tmp = store.new_tmp_path()
    tmp.write_bytes(data)
    store.commit_original(tmp, image_id, meta)
    return meta


def test_switch_to_cold_and_back_keeps_one_whole_copy_and_counts_per_tier(tmp_path: Path) -> None:
    store = tiered_store(tmp_path)
    data = b"\xff\xd8\xff" + os.urandom(4000)
    meta = put(store, A, data)
    hot, cold = store.path_for(A, ORIGINAL), store.cold_dir_of(A) / ORIGINAL
    os.utime(hot, (1000, 1000))  # an old last-read marker survives the move
    assert store.switch_tier(A, COLD, meta.sha256) == len(data)
    assert hot.exists() and cold.exists()  # both until the old copy is dropped
    assert store.original_paths(A) == [cold, hot]  # readers switched already
    store.drop_other_copy(A, COLD)
    assert not hot.exists() and cold.read_bytes() == data and cold.stat().st_mtime == 1000
    usage = store.usage()
    assert usage.tiers[COLD].originals == 1 and usage.tiers[COLD].used_bytes == len(data)
    assert usage.tiers[HOT].originals == 0 and usage.objects == 1
    assert usage.capacity_bytes == 10**6 + 10**7
    fresh = Store(store.root, capacity_bytes=10**6, cold_dir=tmp_path / "cold", cold_capacity_bytes=10**7)
    fresh.prepare()  # a restart counts both tiers the same way
    assert fresh.usage().tiers == usage.tiers and fresh.meta(A) == meta and fresh.tier_of(A) == COLD

    assert store.switch_tier(A, HOT, meta.sha256) == len(data)
    store.drop_other_copy(A, HOT)
    assert hot.read_bytes() == data and not cold.exists()
    assert store.usage().tiers[COLD].used_bytes == 0 and store.usage().tiers[HOT].originals == 1
    store.switch_tier(A, COLD, meta.sha256)
    store.remove_image(A)  # a delete removes the image from every tier
    assert not cold.parent.exists() and not store.image_dir(A).exists()
    assert store.usage().used_bytes == 0 and store.usage().objects == 0


def test_a_crash_between_switch_and_drop_keeps_the_hot_copy(tmp_path: Path) -> None:
    store = tiered_store(tmp_path)
    meta = put(store, A, b"\xff\xd8\xff" + os.urandom(1000))
    store.switch_tier(A, COLD, meta.sha256)  # the process dies before drop_other_copy
    fresh = Store(store.root, cold_dir=tmp_path / "cold")
    fresh.prepare()
    assert fresh.tier_of(A) == HOT and not (fresh.cold_dir_of(A) / ORIGINAL).exists()
    assert fresh.usage().tiers[COLD].used_bytes == 0 and fresh.usage().objects == 1


def test_bad_bytes_and_shared_originals_are_not_moved(tmp_path: Path) -> None:
    store = tiered_store(tmp_path)
    data = b"\xff\xd8\xff" + os.urandom(1000)
    meta = put(store, A, data)
    with pytest.raises(CopyMismatch):
        store.switch_tier(A, COLD, "0" * 64)
    assert store.tier_of(A) == HOT and not any((tmp_path / "cold" / "tmp").iterdir())
    assert store.link_copy(A, B, meta) is not None  # deduplicated: one inode, two images
    assert store.switch_tier(A, COLD, meta.sha256) == 0 and store.tier_of(A) == HOT


def test_eviction_takes_only_variants_and_spares_fresh_reads(tmp_path: Path) -> None:
    store = tiered_store(tmp_path)
    put(store, A, b"\xff\xd8\xff" + os.urandom(1000))
    tmp = store.new_tmp_path()
    tmp.write_bytes(b"v" * 500)
    store.commit(tmp, A, "w300.webp")
    with pytest.raises(ValueError):
        store.evict_variant(A, ORIGINAL, 0.0, 0.0)
    store.note_read(A, "w300.webp", now=100.0)
    assert store.evict_variant(A, "w300.webp", idle_s=60.0, now=130.0) == 0  # read 30 s ago: kept
    assert store.take_variant_bytes() == {A: 500}
    assert store.evict_variant(A, "w300.webp", idle_s=60.0, now=170.0) == 500
    assert not store.path_for(A, "w300.webp").exists() and store.take_variant_bytes() == {A: 0}


def stored(name: str, last_read: float, size: int = 100, links: int = 1) -> StoredFile:
    return StoredFile("i" + name, name, size, last_read, links)


def test_policy_lru_pressure_cold_and_promotion() -> None:
    hot = TierUsage(capacity_bytes=1000, used_bytes=950, free_bytes=50, originals=1)
    assert tier_policy.bytes_to_free(hot, 0.9, 0.8) == 150
    assert tier_policy.bytes_to_free(TierUsage(1000, 900, 100, 1), 0.9, 0.8) == 0
    files = [stored("w600.webp", 30), stored(ORIGINAL, 1), stored("w300.webp", 10), stored("thumb.jpg", 20)]
    plan = tier_policy.eviction_plan(files, to_free=150, now=100, idle_s=0, limit=10)
    assert [f.name for f in plan] == ["w300.webp", "thumb.jpg"]  # least recently read first, never the original
    assert [f.name for f in tier_policy.eviction_plan(files, 1000, now=100, idle_s=85, limit=10)] == ["w300.webp"]
    assert len(tier_policy.eviction_plan(files, 1000, now=100, idle_s=0, limit=2)) == 2
    day = tier_policy.DAY_S
    originals = [stored(ORIGINAL, 0), stored(ORIGINAL, 5 * day), stored(ORIGINAL, 0, links=2), stored("w1.png", 0)]
    chosen = tier_policy.cold_candidates(originals, now=10 * day, cold_after_days=7, idle_s=60, limit=10)
    assert chosen == [originals[0]]  # idle long enough, not shared, and an original
    assert tier_policy.promotions({"a": 2, "b": 5, "c": 3}, min_reads=3, limit=10) == ["b", "c"]
    assert tier_policy.promotions({"a": 9}, min_reads=0, limit=10) == []


async def test_a_read_that_resolved_the_old_tier_still_gets_the_bytes(tmp_path: Path) -> None:
    store = tiered_store(tmp_path)
    data = b"\xff\xd8\xff" + os.urandom(50_000)
    meta = put(store, A, data)

    async def handler(request: web.Request) -> web.StreamResponse:
        paths = store.original_paths(A)  # resolved while the original is hot...
        store.switch_tier(A, COLD, meta.sha256)  # ...then moved before the response opens a file
        store.drop_other_copy(A, COLD)
        assert not paths[0].exists()
        opened = open_first(paths)
        return SendFile(OpenFile((A, ORIGINAL), opened.fobj, opened.st.st_size, "", {}))

    app = web.Application()
    app.router.add_get("/", handler)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/")
        assert resp.status == 200 and await resp.read() == data


async def test_tier_rates_figure(tmp_path: Path) -> None:
    """Prints eviction, cold-move and promotion rates of a real tier manager on real files, without a rate
    cap (run with -s to see them); asserts only that every file was handled."""
    import dataclasses
    import time

    from common.config import TiersSettings
    from common.ids import new_image_id
    from storage_node.tiers import TierManager

    n_images, n_variants, original_size, variant_size = 100, 4, 256 * 1024, 16 * 1024
    store = Store(tmp_path / "hot", cold_dir=tmp_path / "cold")
    store.prepare()
    ids = [new_image_id() for _ in range(n_images)]
    for image_id in ids:
        put(store, image_id, b"\xff\xd8\xff" + os.urandom(original_size - 3))
        for v in range(n_variants):
            tmp = store.new_tmp_path()
            tmp.write_bytes(os.urandom(variant_size))
            store.commit(tmp, image_id, f"w{150 * (v + 1)}.webp")
    used = store.usage().tiers[HOT].used_bytes
    store.capacity_bytes = used  # full: every variant must go to reach a low-water mark under the originals
    figures = {**dataclasses.asdict(TiersSettings()), "idle_grace_s": 0.0, "unlink_grace_s": 0.0}
    figures.update(move_bytes_per_s=0, max_moves_per_pass=10**6, max_evictions_per_pass=10**6)
    evict = TierManager(store, TiersSettings(**{**figures, "hot_high_water": 0.9, "hot_low_water": 0.01}))
    started = time.perf_counter()
    result = await evict.run_pass()
    evict_s = time.perf_counter() - started
    assert result.evicted == n_images * n_variants
    store.capacity_bytes = 0
    to_cold = TierManager(store, TiersSettings(**{**figures, "cold_after_days": 1e-9, "promote_reads": 0}))
    started = time.perf_counter()
    result = await to_cold.run_pass(now=time.time() + 60)
    cold_s = time.perf_counter() - started
    assert result.to_cold == n_images and store.usage().tiers[COLD].originals == n_images
    for image_id in ids:
        store.note_read(image_id, ORIGINAL)
    to_hot = TierManager(store, TiersSettings(**{**figures, "cold_after_days": 1000.0, "promote_reads": 1}))
    started = time.perf_counter()
    result = await to_hot.run_pass()
    hot_s = time.perf_counter() - started
    assert result.to_hot == n_images and store.usage().tiers[HOT].originals == n_images
    mb = n_images * original_size / 1e6
    print(
        f"\ntier rates (one pass each, no rate cap, {n_images} originals of {original_size // 1024} KiB, "
        f"{n_images * n_variants} variants of {variant_size // 1024} KiB):"
        f"\n  eviction: {n_images * n_variants / evict_s:.0f} variants/s (pass with scan {evict_s:.2f}s)"
        f"\n  to cold:  {n_images / cold_s:.0f} originals/s, {mb / cold_s:.1f} MB/s (copy, fsync, re-hash, rename)"
        f"\n  to hot:   {n_images / hot_s:.0f} originals/s, {mb / hot_s:.1f} MB/s"
    )


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("tiers", {"hot_high_water": 0.5, "hot_low_water": 0.6}, "hot_high_water"),
        ("tiers", {"cold_after_days": 0}, "cold_after_days"),
        ("tiers", {"promote_reads": 5000}, "promote_reads"),
        ("tiers", {"move_bytes_per_s": -1}, "counts and rates"),
        ("node", {"data_dir": "/srv/x", "cold_dir": "/srv/x"}, "node.cold_dir"),
    ],
)
def test_bad_tier_settings_stop_the_start(section: str, values: dict[str, object], message: str) -> None:
    from common.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match=message):
        load_settings(env={}, overrides={section: values})


async def test_a_build_whose_source_moved_while_queued_reads_the_new_tier(tmp_path: Path, testdata: Path) -> None:
    from common.variants import parse_variant
    from storage_node.render import Renderer

    store = tiered_store(tmp_path)
    data = (testdata / "coins_gray.png").read_bytes()
    meta = put(store, A, data)
    renderer = Renderer(store, 1)
    real_run = renderer.sandbox.run
    calls = []

    async def move_first(job: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        # The job is dispatched with the hot path, but the original goes cold before the worker opens it.
        calls.append(job["path"])
        if len(calls) == 1:
            store.switch_tier(A, COLD, meta.sha256)
            store.drop_other_copy(A, COLD)
        return await real_run(job, timeout_s)

    renderer.sandbox.run = move_first  # type: ignore[method-assign]
    try:
        path = await renderer.ensure(A, parse_variant("w150.webp"))
    finally:
        await renderer.close()
    assert path.read_bytes()[8:12] == b"WEBP"
    assert calls == [str(store.path_for(A, ORIGINAL)), str(store.cold_dir_of(A) / ORIGINAL)]


async def test_a_full_cold_tier_leaves_originals_hot(tmp_path: Path) -> None:
    import dataclasses

    from common.config import TiersSettings
    from storage_node.tiers import TierManager

    store = Store(tmp_path / "hot", cold_dir=tmp_path / "cold", cold_capacity_bytes=6000)
    store.prepare()
    put(store, A, b"\xff\xd8\xff" + os.urandom(4000))
    put(store, B, b"\xff\xd8\xff" + os.urandom(4000))
    settings = {**dataclasses.asdict(TiersSettings()), "cold_after_days": 1e-9, "idle_grace_s": 0.0}
    result = await TierManager(store, TiersSettings(**{**settings, "unlink_grace_s": 0.0})).run_pass(now=1e10)
    assert result.to_cold == 1  # room for one of them only
    assert sorted(t for t in (store.tier_of(A), store.tier_of(B)) if t) == [COLD, HOT]
