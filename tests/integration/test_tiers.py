"""Tiered storage on real nodes (real files, real HTTP): variants evicted least recently used first under
pressure and rebuilt on demand, originals never evicted; idle originals moved to the cold directory
(verified) and served from there with the same bytes and ETag; reads racing moves never fail; promotion
back to hot; replication and scrubbing of cold originals; the bytes stored per image."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from common import signing
from common.config import TiersSettings
from minicdn.embedded import EmbeddedNats
from storage_node import keys as node_keys
from storage_node.objects.store import COLD, HOT, ORIGINAL, READY_MARKER, Store
from storage_node.tiers import TierManager
from tests.cluster import TestCluster, make_jpeg

NODE = "eu-west-1"  # a replica (not the origin): its variants exist only once asked for
# Hand-run passes only: the node's own manager waits an hour between passes.
QUIET = {"interval_s": 3600.0}


@pytest.fixture
async def tiered(
    tmp_path: Path, database_url: str, nats_server: EmbeddedNats, geoip_db: str
) -> AsyncIterator[TestCluster]:
    c = TestCluster(tmp_path, database_url, nats_server.url, geoip_db, extra={"tiers": QUIET}, cold_tier=True)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


def manager(cluster: TestCluster, node_id: str, **overrides: Any) -> TierManager:
    """A tier manager over the node's live store, with the figures the test needs."""
    base = {"idle_grace_s": 0.0, "unlink_grace_s": 0.05, "move_bytes_per_s": 0, **overrides}
    app = cluster.apps[node_id]
    return TierManager(app[node_keys.STORE], TiersSettings(**{**dataclasses.asdict(TiersSettings()), **base}))


def live_store(cluster: TestCluster, node_id: str) -> Store:
    return cluster.apps[node_id][node_keys.STORE]


def original_url(cluster: TestCluster, node_id: str, image_id: str) -> str:
    settings = cluster.node_settings[node_id]
    key = settings.signing_key("k1")
    assert key is not None
    params = signing.sign(signing.Claims("download", image_id, "", int(time.time()) + 600, path=ORIGINAL), "k1", key)
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{settings.node.base_url}/i/{image_id}/{ORIGINAL}?{query}"


async def fetch(cluster: TestCluster, url: str) -> tuple[int, bytes, str]:
    assert cluster.session is not None
    async with cluster.session.get(url, allow_redirects=False) as resp:
        return resp.status, await resp.read(), resp.headers.get("ETag", "")


async def stored_image(cluster: TestCluster, seed: int, size: tuple[int, int] = (640, 480)) -> dict[str, Any]:
    up = await cluster.upload(make_jpeg(*size, seed=seed), client_ip="3.0.1.10")
    await cluster.wait_replicated(up["image_id"])
    await cluster.wait_ready(up["image_id"])
    return up


async def test_variants_are_evicted_lru_first_and_rebuilt_originals_never(tiered: TestCluster) -> None:
    up = await stored_image(tiered, seed=1)
    image_id = up["image_id"]
    base = f"{tiered.node_settings[NODE].node.base_url}/i/{image_id}"
    store = live_store(tiered, NODE)
    etags = {}
    # Built and read in this order, then the first is read again: LRU order is w300, w150, w600.
    for name in ("w600.png", "w300.png", "w150.png", "w600.png"):
        status, _body, etags[name] = await fetch(tiered, f"{base}/{name}")
        assert status == 200, name
        await asyncio.sleep(0.02)  # distinct read times
    sizes = {n: store.path_for(image_id, n).stat().st_size for n in ("w600.png", "w300.png", "w150.png")}
    used = store.usage().tiers[HOT].used_bytes
    # Pressure: the hot tier is full (capacity = what it holds, past the 0.95 high-water mark); getting back
    # to the low-water mark needs w300 and half of w150 gone, so w300 and w150 go, w600 (read last) stays.
    target = used - sizes["w300.png"] - sizes["w150.png"] // 2
    store.capacity_bytes = used
    low = target / used
    assert low < 0.95, "the variants must outweigh the original for this set-up"
    result = await manager(tiered, NODE, hot_high_water=0.95, hot_low_water=low).run_pass()
    assert result.evicted == 2 and result.evicted_bytes == sizes["w300.png"] + sizes["w150.png"]
    assert store.path_for(image_id, "w600.png").exists()
    assert not store.path_for(image_id, "w300.png").exists() and not store.path_for(image_id, "w150.png").exists()
    assert store.original_path(image_id).exists()
    assert store.usage().tiers[HOT].used_bytes == used - result.evicted_bytes

    # An evicted variant is rebuilt on the next request: same ETag, on disk again.
    status, body, etag = await fetch(tiered, f"{base}/w300.png")
    assert status == 200 and etag == etags["w300.png"] and body.startswith(b"\x89PNG")
    assert store.path_for(image_id, "w300.png").exists()

    # However hard the pressure, originals (and their sidecar and markers) are never evicted: only variants go.
    store.capacity_bytes = store.usage().tiers[HOT].used_bytes
    result = await manager(tiered, NODE, hot_high_water=0.5, hot_low_water=0.01).run_pass()
    assert result.evicted == 2  # w600 and the rebuilt w300
    left = sorted(p.name for p in store.image_dir(image_id).iterdir())
    assert left == ["meta.json", ORIGINAL, READY_MARKER]
    status, body, _ = await fetch(tiered, original_url(tiered, NODE, image_id))
    assert status == 200 and hashlib.sha256(body).hexdigest() == up["sha256"]


async def test_idle_original_moves_cold_verified_and_serves_the_same(tiered: TestCluster) -> None:
    up = await stored_image(tiered, seed=2)
    image_id = up["image_id"]
    store = live_store(tiered, NODE)
    url = original_url(tiered, NODE, image_id)
    status, before, etag_before = await fetch(tiered, url)
    assert status == 200
    await asyncio.sleep(0.05)
    result = await manager(tiered, NODE, cold_after_days=0.01 / 86400).run_pass()
    assert result.to_cold == 1 and result.to_cold_bytes == up["bytes"]
    cold = store.cold_dir_of(image_id) / ORIGINAL
    assert cold.exists() and not store.path_for(image_id, ORIGINAL).exists()
    assert Path(tiered.node_settings[NODE].node.cold_dir) in cold.parents
    assert hashlib.sha256(cold.read_bytes()).hexdigest() == up["sha256"]
    assert store.tier_of(image_id) == COLD and store.path_for(image_id, "meta.json").exists()  # sidecar stays hot
    tiers = store.usage().tiers
    assert tiers[COLD].originals == 1 and tiers[COLD].used_bytes == up["bytes"]

    status, after, etag_after = await fetch(tiered, url)
    assert status == 200 and after == before and etag_after == etag_before
    # A fresh process (nothing cached) finds it too, and a new variant is built from the cold original.
    assert Store(store.root, cold_dir=store.cold_root or "").meta(image_id) is not None
    base = f"{tiered.node_settings[NODE].node.base_url}/i/{image_id}"
    status, body, _ = await fetch(tiered, f"{base}/w150.webp")
    assert status == 200 and body[8:12] == b"WEBP"
    # /stats shows the tiers.
    status, stats, _ = await fetch(tiered, f"{tiered.node_settings[NODE].node.base_url}/stats")
    figures = json.loads(stats)
    assert figures["tiers"]["cold"]["originals"] == 1 and figures["tiers"]["hot"]["used_bytes"] > 0


async def test_a_copy_that_does_not_verify_is_never_switched(tiered: TestCluster) -> None:
    up = await stored_image(tiered, seed=3)
    image_id = up["image_id"]
    store = live_store(tiered, NODE)
    hot = store.path_for(image_id, ORIGINAL)
    data = bytearray(hot.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other hash
    hot.write_bytes(bytes(data))
    result = await manager(tiered, NODE, cold_after_days=1e-9).run_pass()
    assert result.to_cold == 0 and result.refused == 1
    assert hot.exists() and not (store.cold_dir_of(image_id) / ORIGINAL).exists()
    assert store.cold_tmp is not None and not any(store.cold_tmp.iterdir())  # no half copy left behind


async def test_reads_racing_moves_both_ways_never_fail(tiered: TestCluster) -> None:
    ups = [await stored_image(tiered, seed=10 + i, size=(200, 150)) for i in range(8)]
    urls = {up["image_id"]: original_url(tiered, NODE, up["image_id"]) for up in ups}
    want = {up["image_id"]: up["sha256"] for up in ups}
    store = live_store(tiered, NODE)
    failures: list[str] = []
    reads = 0
    stop = asyncio.Event()

    async def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            for image_id, url in urls.items():
                status, body, _ = await fetch(tiered, url)
                reads += 1
                if status != 200 or hashlib.sha256(body).hexdigest() != want[image_id]:
                    failures.append(f"{image_id}: {status}")

    # No grace at all: the old copy goes right after the switch, so readers really race the unlink.
    to_cold = manager(tiered, NODE, cold_after_days=1e-9, unlink_grace_s=0.0, promote_reads=0)
    to_hot = manager(tiered, NODE, cold_after_days=1000.0, unlink_grace_s=0.0, promote_reads=1)
    readers = [asyncio.create_task(reader()) for _ in range(4)]
    moved = {COLD: 0, HOT: 0}
    try:
        for _ in range(3):
            got = await to_cold.run_pass(now=time.time() + 60)  # every original idle long enough
            moved[COLD] += got.to_cold
            assert all(store.tier_of(i) == COLD for i in urls)
            # Reads of cold originals: each asks for promotion.
            await tiered.wait_for(lambda: len(store.cold_reads(since=0)) == len(urls), "a read of each cold original")
            got = await to_hot.run_pass()
            moved[HOT] += got.to_hot
            assert all(store.tier_of(i) == HOT for i in urls)
    finally:
        stop.set()
        await asyncio.gather(*readers)
    assert failures == []
    assert moved == {COLD: 24, HOT: 24} and reads > 48


async def test_read_cold_original_is_promoted_back_to_hot(tiered: TestCluster) -> None:
    up = await stored_image(tiered, seed=4)
    image_id = up["image_id"]
    store = live_store(tiered, NODE)
    assert (await manager(tiered, NODE, cold_after_days=1e-9).run_pass()).to_cold == 1
    keep_cold = manager(tiered, NODE, cold_after_days=1000.0, promote_reads=3, promote_window_s=60.0)
    url = original_url(tiered, NODE, image_id)
    for _ in range(2):
        assert (await fetch(tiered, url))[0] == 200
    assert (await keep_cold.run_pass()).to_hot == 0  # two reads: not enough
    assert store.tier_of(image_id) == COLD
    assert (await fetch(tiered, url))[0] == 200
    result = await keep_cold.run_pass()
    assert result.to_hot == 1 and result.to_hot_bytes == up["bytes"]
    assert store.path_for(image_id, ORIGINAL).exists() and not (store.cold_dir_of(image_id) / ORIGINAL).exists()
    assert hashlib.sha256(store.path_for(image_id, ORIGINAL).read_bytes()).hexdigest() == up["sha256"]
    status, body, _ = await fetch(tiered, url)
    assert status == 200 and hashlib.sha256(body).hexdigest() == up["sha256"]


async def test_cold_originals_replicate_and_scrub(tiered: TestCluster) -> None:
    from replicator.jobs import Wanted, replicate
    from replicator.node_root import REPLICATOR, SCRUBBER

    up = await stored_image(tiered, seed=5)
    image_id = up["image_id"]
    for node_id in ("us-east-1", "eu-west-1", "ap-southeast-1"):
        assert (await manager(tiered, node_id, cold_after_days=1e-9).run_pass()).to_cold == 1

    # Scrub reads the cold copy; flipped bytes there are found and replaced from a (cold) peer.
    store = live_store(tiered, NODE)
    cold = store.cold_dir_of(image_id) / ORIGINAL
    data = bytearray(cold.read_bytes())
    data[100] ^= 0xFF
    cold.write_bytes(bytes(data))
    result = await tiered.apps[NODE][SCRUBBER].run_pass()
    assert result.checked == 1 and result.corrupt == 1 and result.repaired == 1
    assert tiered.disk_sha256(NODE, image_id) == up["sha256"]
    assert (await tiered.replicas(image_id))[NODE] == "ok"

    # A node that lost its copy fetches it from peers whose originals are cold.
    target = "ap-southeast-1"
    live_store(tiered, target).remove_image(image_id)
    assert tiered.disk_sha256(target, image_id) is None
    replicator = tiered.apps[target][REPLICATOR]
    await replicate(replicator.ctx, Wanted(image_id, up["sha256"], up["bytes"], "image/jpeg"))
    assert tiered.disk_sha256(target, image_id) == up["sha256"]


async def test_stored_bytes_per_image_count_every_replica_and_variant(tiered: TestCluster) -> None:
    up = await stored_image(tiered, seed=6)
    image_id = up["image_id"]
    base = f"{tiered.node_settings[NODE].node.base_url}/i/{image_id}"
    assert (await fetch(tiered, f"{base}/w300.png"))[0] == 200
    variant_bytes = 0
    for node_id in tiered.node_settings:
        folder = live_store(tiered, node_id).image_dir(image_id)
        variant_bytes += sum(p.stat().st_size for p in folder.iterdir() if p.name not in ("meta.json", ORIGINAL))
        await tiered.apps[node_id][node_keys.TIERS].run_pass()  # the node's own manager reports to Postgres
    status, body = await tiered.api("GET", f"/v1/images/{image_id}")
    assert status == 200
    assert body["stored_bytes"] == 3 * up["bytes"] + variant_bytes
    assert variant_bytes > 0


async def test_tiers_show_in_nodes_dashboard_metrics_and_status(tiered: TestCluster) -> None:
    up = await stored_image(tiered, seed=7)
    base = f"{tiered.node_settings[NODE].node.base_url}/i/{up['image_id']}"
    assert (await fetch(tiered, f"{base}/w300.png"))[0] == 200
    assert (await manager(tiered, NODE, cold_after_days=1e-9).run_pass()).to_cold == 1
    await tiered.apps[NODE][node_keys.TIERS].run_pass()  # exports the tier gauges
    variants = live_store(tiered, NODE).usage().variant_bytes
    assert variants > 0

    async def heartbeat_seen() -> bool:
        status, body = await tiered.api("GET", "/v1/nodes")
        node = next(n for n in body["nodes"] if n["node_id"] == NODE)
        tiers = node["tiers"]
        # A heartbeat taken mid-move (new copy in, old one not yet dropped) shows both: wait for the end.
        return status == 200 and tiers.get("cold", {}).get("originals") == 1 and tiers["hot"]["originals"] == 0

    await tiered.wait_for(heartbeat_seen, "the cold tier in /v1/nodes")
    _, nodes = await tiered.api("GET", "/v1/nodes")
    node = next(n for n in nodes["nodes"] if n["node_id"] == NODE)
    assert node["tiers"]["hot"]["originals"] == 0 and node["tiers"]["cold"]["used_bytes"] == up["bytes"]
    assert node["variant_bytes"] == variants

    async def dashboard_seen() -> bool:
        _, board = await tiered.api("GET", "/v1/dashboard")
        entry = next(n for n in board["nodes"] if n["node_id"] == NODE)
        return bool(entry["tiers"].get("cold", {}).get("originals") == 1 and entry["tiers"]["hot"]["originals"] == 0)

    await tiered.wait_for(dashboard_seen, "the cold tier on the dashboard")
    _, board = await tiered.api("GET", "/v1/dashboard")
    assert board["summary"]["tiers"]["cold"]["originals"] == 1  # two other nodes hold theirs hot
    assert board["summary"]["tiers"]["hot"]["originals"] == 2

    async with tiered.session.get(f"{tiered.node_settings[NODE].node.base_url}/metrics") as resp:  # type: ignore[union-attr]
        metrics = await resp.text()
    assert f'minicdn_node_tier_originals{{node_id="{NODE}",region="eu-west",set_id="set-1",tier="cold"}} 1.0' in metrics
    assert 'minicdn_tier_moves_total{to="cold"}' in metrics

    env = {"MINICDN_QUERY_URL": tiered.query_url, "MINICDN_API_KEY": tiered.api_key, "COLUMNS": "160"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-P",
        "-m",
        "minicdn.cli",
        "status",
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    text = out.decode()
    assert proc.returncode == 0, text
    assert "storage tiers" in text and "cold" in text, text
    assert any(NODE in line and "cold" in line for line in text.splitlines()), text
