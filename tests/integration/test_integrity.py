"""Integrity as an invariant, in a real three-region cluster: a node never answers 200 with bytes whose hash is
not the one recorded at ingest. A truncated or bit-flipped original is refused on its first serve or variant
build (307 to a holder with a good copy, from every region's point of view), recorded `corrupt`, repaired
from a good holder, and served again; with no good copy anywhere the answer is 503 `no_good_copy`; a lost
sidecar comes back from the record in Postgres, never from the damaged bytes; the scrubber finds damage
nobody asked for within its bound."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from storage_node import keys as node_keys
from storage_node.objects.store import ORIGINAL
from tests.cluster import NODE_REGIONS, REGION_IPS, MakeCluster, TestCluster, make_jpeg

US_CLIENT = REGION_IPS["us-east"][1]
VARIANT = "w300.webp"  # never built before the damage (the eager variants are thumbnails)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size: only a hash can tell
    path.write_bytes(bytes(data))


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def metric(cluster: TestCluster, node_id: str, name: str, labels: dict[str, str]) -> float:
    value = cluster.apps[node_id][node_keys.METRICS].http.registry.get_sample_value(name, labels)
    return value or 0.0


async def url_for(cluster: TestCluster, image_id: str, variant: str, client_ip: str) -> str:
    """The URL the query service hands a client in ``client_ip``'s region (signed for the original)."""
    params: dict[str, Any] = {"client_ip": client_ip}
    params |= {"variant": "original"} if variant == ORIGINAL else {"w": 300, "fmt": "webp"}
    status, body = await cluster.api("GET", f"/v1/images/{image_id}/url", params=params)
    assert status == 200, body
    return str(body["url"])


def on_node(cluster: TestCluster, node_id: str, url: str) -> str:
    """The same path and query (a signature is valid on every holder) asked of ``node_id``."""
    parts = urlsplit(url)
    return f"{cluster.node_settings[node_id].node.base_url}{parts.path}?{parts.query}"


def node_of(cluster: TestCluster, url: str) -> str:
    base = f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"
    return next(n for n, s in cluster.node_settings.items() if s.node.base_url == base)


async def wait_repaired(cluster: TestCluster, node_id: str, up: dict[str, Any], timeout_s: float) -> None:
    """Until the node holds the recorded bytes again and has counted the repair (which follows the copy)."""
    image_id, sha256 = up["image_id"], up["sha256"]
    await cluster.wait_for(lambda: cluster.disk_sha256(node_id, image_id) == sha256, f"repair on {node_id}", timeout_s)
    labels = {"node_id": node_id, "was": "corrupt"}
    await cluster.wait_for(lambda: metric(cluster, node_id, "minicdn_repairs_total", labels) >= 1, "repair counted", 5)


async def follow(cluster: TestCluster, url: str) -> list[tuple[str, int, bytes]]:
    """Every hop a client makes: (node, status, body), redirects followed by hand."""
    assert cluster.session is not None
    hops = []
    for _ in range(4):
        async with cluster.session.get(url, allow_redirects=False) as resp:
            hops.append((node_of(cluster, url), resp.status, await resp.read()))
            if resp.status != 307:
                return hops
            assert resp.headers["Cache-Control"] == "no-store"
            url = resp.headers["Location"]
    raise AssertionError(f"redirect loop: {[(n, s) for n, s, _ in hops]}")


@dataclass
class Good:
    """What a good answer is: the recorded bytes for an original, the variant a good holder builds."""

    sha256: dict[str, str]
    variants: dict[str, bytes] = field(default_factory=dict)

    def __call__(self, image_id: str, variant: str, body: bytes) -> bool:
        if variant == ORIGINAL:
            return hashlib.sha256(body).hexdigest() == self.sha256[image_id]
        return body == self.variants[image_id]


async def check_from(cluster: TestCluster, region: str, image_id: str, damaged: str, good: Good) -> None:
    """A client in ``region`` gets the original and the new variant through the query service's URL and from the
    damaged node: it always ends with a 200, and no 200 on the way carries other bytes than the good ones."""
    client = REGION_IPS[region][1]
    for variant in (ORIGINAL, VARIANT):
        url = await url_for(cluster, image_id, variant, client)
        for start in (url, on_node(cluster, damaged, url)):
            hops = await follow(cluster, start)
            assert hops[-1][1] == 200, (region, variant, [(n, s) for n, s, _ in hops])
            for node, status, body in hops:
                assert status == 307 or good(image_id, variant, body), (region, variant, node)


async def test_damaged_originals_are_never_served_and_are_repaired(
    make_cluster: MakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="storage_node.integrity")
    caplog.set_level(logging.INFO, logger="replicator.jobs")
    cluster = await make_cluster(scrub={"interval_s": 3600})  # here only requests find the damage
    ups = [await cluster.upload(make_jpeg(seed=60 + i), client_ip=US_CLIENT) for i in range(3)]
    for up in ups:
        await cluster.wait_replicated(up["image_id"])
        await cluster.wait_ready(up["image_id"])
    # One damaged copy per region, each found by a different check on its first request.
    plan = [  # (image, damaged node, damage, first request, check that finds it, what differs)
        (ups[0], "eu-west-1", truncate, ORIGINAL, "serve", "size"),
        (ups[1], "ap-southeast-1", flip, VARIANT, "variant", "sha256"),
        (ups[2], "us-east-1", flip, ORIGINAL, "serve", "sha256"),
    ]
    good = Good({up["image_id"]: str(up["sha256"]) for up in ups})
    for up, damaged, *_ in plan:  # the new variant as a good holder builds it, before any damage
        healthy = next(n for n in cluster.node_settings if n != damaged)
        url = await url_for(cluster, up["image_id"], VARIANT, US_CLIENT)
        hops = await follow(cluster, on_node(cluster, healthy, url))
        assert hops[-1][1] == 200 and hops[-1][0] == healthy
        good.variants[up["image_id"]] = hops[-1][2]
    for up, damaged, damage, *_ in plan:
        damage(cluster.store(damaged).original_path(up["image_id"]))

    # The first request to each damaged node: a 307 to a good holder (never itself), which answers 200.
    for up, damaged, _damage, first, how, what in plan:
        image_id = up["image_id"]
        hops = await follow(cluster, on_node(cluster, damaged, await url_for(cluster, image_id, first, US_CLIENT)))
        assert [(n, s) for n, s, _ in hops][0] == (damaged, 307) and hops[1][0] != damaged
        assert hops[-1][1] == 200 and good(image_id, first, hops[-1][2])
        assert metric(cluster, damaged, "minicdn_corruptions_total", {"how": how}) == 1
        found = [m for m in messages(caplog) if f"image {image_id} on node {damaged}, found by" in m]
        assert len(found) == 1 and f"found by {how}: {what} recorded" in found[0], found

    # From a client in each region: the query service's URL, and the damaged node itself, for the original and a
    # new variant. Every 200 carries the recorded bytes, whether it comes before or after the repair.
    for region in NODE_REGIONS:
        for up, damaged, *_ in plan:
            await check_from(cluster, region, up["image_id"], damaged, good)

    # Repaired in the background (read repair on the 307) from a good holder, then served from the node itself.
    for up, damaged, *_ in plan:
        image_id = up["image_id"]
        await wait_repaired(cluster, damaged, up, 15)
        await cluster.wait_replicated(image_id)
        for variant in (ORIGINAL, VARIANT):
            url = await url_for(cluster, image_id, variant, US_CLIENT)
            hops = await follow(cluster, on_node(cluster, damaged, url))
            assert [(n, s) for n, s, _ in hops] == [(damaged, 200)] and good(image_id, variant, hops[0][2])
        assert metric(cluster, damaged, "minicdn_repairs_total", {"node_id": damaged, "was": "corrupt"}) >= 1
        assert any(f"repaired: image {image_id} on node {damaged} was corrupt" in m for m in messages(caplog))


async def test_with_no_good_copy_anywhere_the_answer_is_503_until_one_is_back(make_cluster: MakeCluster) -> None:
    cluster = await make_cluster(scrub={"interval_s": 3600})
    up = await cluster.upload(make_jpeg(seed=70), client_ip=US_CLIENT)
    image_id = up["image_id"]
    await cluster.wait_replicated(image_id)
    await cluster.wait_ready(image_id)
    victim, others = "eu-west-1", ["us-east-1", "ap-southeast-1"]
    urls = {v: on_node(cluster, victim, await url_for(cluster, image_id, v, US_CLIENT)) for v in (ORIGINAL, VARIANT)}
    for node_id in others:
        await cluster.stop_node(node_id)
    timeout_s = cluster.node_settings[victim].health.heartbeat_timeout_s
    truncate(cluster.store(victim).original_path(image_id))
    assert cluster.session is not None

    async def refused() -> bool:
        async with cluster.session.get(urls[ORIGINAL], allow_redirects=False) as resp:  # type: ignore[union-attr]
            assert resp.status in (307, 503), resp.status  # 307 while a stopped node still looks alive
            return resp.status == 503

    await cluster.wait_for(refused, "503 once no holder is healthy", timeout_s + 3)
    for variant, url in urls.items():
        async with cluster.session.get(url, allow_redirects=False) as resp:
            assert resp.status == 503 and resp.headers["Retry-After"] == "1", variant
            assert (await resp.json())["error"]["code"] == "no_good_copy"
    assert (await cluster.replicas(image_id))[victim] == "corrupt"  # no healthy peer: the repair waits
    assert cluster.disk_sha256(victim, image_id) != up["sha256"]

    for node_id in others:
        await cluster.start_node(node_id)
    await wait_repaired(cluster, victim, up, 20)
    await cluster.wait_replicated(image_id)
    for variant, url in urls.items():
        async with cluster.session.get(url, allow_redirects=False) as resp:
            body = await resp.read()
            assert resp.status == 200, variant
        assert variant != ORIGINAL or hashlib.sha256(body).hexdigest() == up["sha256"]


async def test_a_lost_sidecar_comes_back_from_the_record_not_from_the_damaged_bytes(
    make_cluster: MakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="storage_node.integrity")
    cluster = await make_cluster(scrub={"interval_s": 3600})
    up = await cluster.upload(make_jpeg(seed=80), client_ip=US_CLIENT)
    image_id = up["image_id"]
    await cluster.wait_replicated(image_id)
    await cluster.wait_ready(image_id)
    victim = "ap-southeast-1"
    url = on_node(cluster, victim, await url_for(cluster, image_id, ORIGINAL, US_CLIENT))
    # Stopped, damaged and its sidecar lost; back without its replicator, so nothing repairs it meanwhile.
    await cluster.stop_node(victim)
    store = cluster.store(victim)
    flip(store.original_path(image_id))
    sidecar = store.path_for(image_id, "meta.json")
    sidecar.unlink()
    normal = cluster.node_settings[victim]
    cluster.node_settings[victim] = replace(normal, replicator=replace(normal.replicator, enabled=False))
    await cluster.start_node(victim)

    hops = await follow(cluster, url)
    assert [s for _, s, _ in hops] == [307, 200] and hops[0][0] == victim and hops[1][0] != victim
    assert hashlib.sha256(hops[1][2]).hexdigest() == up["sha256"]
    assert json.loads(sidecar.read_text())["sha256"] == up["sha256"]  # the record, not the damaged bytes' hash
    restored = f"image {image_id} on node {victim}: lost sidecar restored from the record"
    assert any(restored in m for m in messages(caplog))
    assert (await cluster.replicas(image_id))[victim] == "corrupt"
    async with cluster.session.get(url, allow_redirects=False) as resp:  # type: ignore[union-attr]
        assert resp.status == 307  # still refused: known bad

    # Its replicator back: the sweep of `corrupt` rows repairs it from a good holder.
    await cluster.stop_node(victim)
    cluster.node_settings[victim] = normal
    await cluster.start_node(victim)
    await wait_repaired(cluster, victim, up, 20)
    await cluster.wait_replicated(image_id)
    hops = await follow(cluster, url)
    assert [(n, s) for n, s, _ in hops] == [(victim, 200)] and hashlib.sha256(hops[0][2]).hexdigest() == up["sha256"]


async def test_the_scrubber_repairs_damage_nobody_asked_for_within_its_bound(make_cluster: MakeCluster) -> None:
    interval_s = 1.0
    cluster = await make_cluster(scrub={"interval_s": interval_s})
    up = await cluster.upload(make_jpeg(seed=90), client_ip=US_CLIENT)
    image_id = up["image_id"]
    await cluster.wait_replicated(image_id)
    await cluster.wait_ready(image_id)
    victim = "eu-west-1"
    flip(cluster.store(victim).original_path(image_id))
    damaged_at = time.monotonic()
    # The bound: one pause, one pass over the node's originals at scrub.bytes_per_s, then one copy (given a
    # wide margin: the copy's time is not what is tested, and a shared 2-core machine can be slow).
    rate = cluster.node_settings[victim].scrub.bytes_per_s
    bound_s = 2 * interval_s + up["bytes"] / rate + 20.0
    await wait_repaired(cluster, victim, up, bound_s)
    print(f"\nFIGURES scrub: unrequested bit flip repaired {time.monotonic() - damaged_at:.2f}s after the damage")
    assert metric(cluster, victim, "minicdn_corruptions_total", {"how": "scrub"}) == 1
    assert metric(cluster, victim, "minicdn_repairs_total", {"node_id": victim, "was": "corrupt"}) >= 1
    await cluster.wait_replicated(image_id)
