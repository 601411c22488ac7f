"""Replacing a lost node: the new member backfills every image of its set (checksums verified), resumably and
without duplicates; `repair` finds what is under-replicated through the indexes."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from common.geo import REGIONS
from query_service import keys as query_keys
from tests.cluster import TestCluster, make_jpeg


def _add_node(cluster: TestCluster, node_id: str, region: str, **replicator: object) -> None:
    from common.procs import free_port

    port = free_port()
    point = REGIONS[region]
    cluster.node_settings[node_id] = cluster.settings(
        node={
            "node_id": node_id,
            "region": region,
            "lat": point.lat,
            "lon": point.lon,
            "set_id": "set-1",
            "base_url": f"http://127.0.0.1:{port}",
            "port": port,
            "data_dir": str(cluster.root / node_id),
            "heartbeat_interval_s": 0.3,
            "render_threads": 1,
        },
        replicator={**cluster.common["replicator"], **replicator},
    )


def _originals(cluster: TestCluster, node_id: str) -> list[str]:
    return sorted(p.parent.name for p in cluster.files_under(node_id, "objects") if p.name == "original")


async def test_replace_a_node_backfills_resumably_without_duplicates(cluster: TestCluster) -> None:
    from common.db.nodes import SlotTaken

    ups = [await cluster.upload(make_jpeg(480, 360, seed=400 + i), client_ip="3.0.1.10") for i in range(12)]
    for up in ups:
        await cluster.wait_replicated(up["image_id"])
    await cluster.wait_ready(up["image_id"])
    await cluster.stop_node("eu-west-1")  # lost for good

    # A second live member for the same set and region is refused until the old one is replaced.
    _add_node(cluster, "eu-west-9", "eu-west", max_bytes_per_s=400_000)  # rate-limited: ~4 images/s
    try:
        await cluster.start_node("eu-west-9")
    except SlotTaken as exc:
        assert "node replace" in str(exc)
    else:
        raise AssertionError("a second live eu-west member of set-1 was accepted")
    cluster.runners.pop("eu-west-9", None)
    cluster.apps.pop("eu-west-9", None)

    status, body = await cluster.api(
        "POST", "/v1/nodes/eu-west-1/replace", json={"with": "eu-west-9", "provision": False}
    )
    assert status == 202, body
    assert body["config"] == {
        "node_id": "eu-west-9",
        "region": "eu-west",
        "set_id": "set-1",
        "lat": REGIONS["eu-west"].lat,
        "lon": REGIONS["eu-west"].lon,
    }
    started = time.monotonic()
    await cluster.start_node("eu-west-9")

    async def progress() -> dict[str, Any]:
        status, body = await cluster.api("GET", "/v1/nodes/eu-west-9/backfill")
        assert status == 200, body
        return dict(body)

    async def partly() -> bool:
        p = await progress()
        return 0 < int(p["done"]) < len(ups)

    await cluster.wait_for(partly, "backfill under way", 10)
    await cluster.stop_node("eu-west-9")  # interrupted halfway
    halfway = await progress()
    assert halfway["expected"] == len(ups) and not halfway["complete"]
    assert 0 < len(_originals(cluster, "eu-west-9")) < len(ups)

    await cluster.start_node("eu-west-9")  # resumes where it stopped

    async def complete() -> bool:
        return bool((await progress())["complete"])

    await cluster.wait_for(complete, "backfill complete", 20)
    took_s = time.monotonic() - started
    assert _originals(cluster, "eu-west-9") == sorted(u["image_id"] for u in ups)  # each exactly once
    for up in ups:
        assert cluster.disk_sha256("eu-west-9", up["image_id"]) == up["sha256"]
        states = await cluster.replicas(up["image_id"])
        assert states == {"us-east-1": "ok", "ap-southeast-1": "ok", "eu-west-9": "ok"}
    assert cluster.files_under("eu-west-9", "tmp") == []
    status, body = await cluster.api(
        "POST", "/v1/nodes/eu-west-1/replace", json={"with": "eu-west-8", "provision": False}
    )
    assert status == 409 and body["error"]["code"] == "already_replaced"  # once is enough

    async def succeeded() -> bool:
        status, view = await cluster.api("GET", "/v1/nodes")
        return any(e["kind"] == "replace" and e["state"] == "succeeded" for e in view["events"])

    await cluster.wait_for(succeeded, "replacement recorded as succeeded", 10)
    status, found = await cluster.api("GET", f"/v1/images/{ups[0]['image_id']}/url", params={"client_ip": "52.16.1.10"})
    assert found["node_id"] == "eu-west-9"
    total = sum(u["bytes"] for u in ups)
    print(
        f"\nFIGURES backfill of {len(ups)} images ({total / 1e6:.1f} MB) at a 0.4 MB/s cap, interrupted once: "
        f"{took_s:.2f}s"
    )


async def test_replace_rejections(cluster: TestCluster) -> None:
    status, body = await cluster.api("POST", "/v1/nodes/nope-1/replace", json={"with": "x-1"})
    assert status == 404 and body["error"]["code"] == "not_found"
    for bad in ("Bad Id", "\u00e9u-west-9", "-eu-west-9", "x" * 64):  # what no {node_id} route could address
        status, body = await cluster.api("POST", "/v1/nodes/eu-west-1/replace", json={"with": bad})
        assert status == 400 and body["error"]["code"] == "invalid_request", bad
    status, body = await cluster.api("POST", "/v1/nodes/eu-west-1/replace", json={"with": "us-east-1"})
    assert status == 409
    status, body = await cluster.api("POST", "/v1/nodes/eu-west-1/replace", data=b"{not json")
    assert status == 400
    status, body = await cluster.api("POST", "/v1/nodes/eu-west-1/state", json={"state": "sleepy"})
    assert status == 400
    # Bodies the shared JSON reader refuses: absurd nesting (not a 500) and a NUL Postgres cannot store.
    status, body = await cluster.api("POST", "/v1/nodes/eu-west-1/state", data=b"[" * 5000)
    assert status == 400 and body["error"]["code"] == "invalid_request"
    status, body = await cluster.api("POST", "/v1/nodes/eu-west-1/replace", json={"reason": "bad\u0000reason"})
    assert status == 400 and body["error"]["code"] == "invalid_request"
    assert cluster.session is not None
    async with cluster.session.post(f"{cluster.query_url}/v1/nodes/eu-west-1/replace", json={}) as resp:
        assert resp.status == 401
    status, view = await cluster.api("GET", "/v1/nodes")
    assert {n["node_id"]: n["state"] for n in view["nodes"]}["eu-west-1"] == "active"  # nothing changed


async def test_repair_finds_and_fixes_lost_replicas_and_cli_views(cluster: TestCluster) -> None:

    ups = [await cluster.upload(make_jpeg(320, 240, seed=500 + i), client_ip="3.0.1.10") for i in range(3)]
    for up in ups:
        await cluster.wait_replicated(up["image_id"])
    await cluster.wait_ready(up["image_id"])
    # Files lost behind the database's back while the node is down, found (e.g. by a miss or the scrubber)
    # and flagged `missing`.
    from common.db import replicas as db_replicas

    pool = cluster.apps["query"][query_keys.POOL]
    await cluster.stop_node("ap-southeast-1")
    for up in ups[:2]:
        cluster.store("ap-southeast-1").remove_image(up["image_id"])
        await db_replicas.mark_state(pool, up["image_id"], "ap-southeast-1", "missing")
    env = {"MINICDN_QUERY_URL": cluster.query_url, "MINICDN_API_KEY": cluster.api_key, "COLUMNS": "160"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-P",
        "-m",
        "minicdn.cli",
        "repair",
        "--wait",
        "30",
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    first = (await proc.stdout.readline()).decode()
    assert "2 image(s) under-replicated" in first, first
    await cluster.start_node("ap-southeast-1")  # back: its sweep copies them, the command sees all ok
    out, _ = await proc.communicate()
    text = first + out.decode()
    assert proc.returncode == 0, text
    assert "ap-southeast-1: missing 2" in text and "all replicas ok" in text
    for up in ups:
        assert cluster.disk_sha256("ap-southeast-1", up["image_id"]) == up["sha256"]
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
    for word in ("us-east-1", "eu-west-1", "ap-southeast-1", "set-1", "healthy", "until full", "replication sets"):
        assert word in text, text


async def test_uncapped_backfill_figure(cluster: TestCluster) -> None:
    """Prints how fast a replacement backfills without a rate cap (asserts only completeness)."""
    ups = [await cluster.upload(make_jpeg(480, 360, seed=700 + i), client_ip="3.0.1.10") for i in range(30)]
    for up in ups:
        await cluster.wait_replicated(up["image_id"])
    await cluster.stop_node("ap-southeast-1")
    status, body = await cluster.api(
        "POST", "/v1/nodes/ap-southeast-1/replace", json={"with": "ap-southeast-9", "provision": False}
    )
    assert status == 202, body
    _add_node(cluster, "ap-southeast-9", "ap-southeast")
    started = time.monotonic()
    await cluster.start_node("ap-southeast-9")

    async def complete() -> bool:
        status, p = await cluster.api("GET", "/v1/nodes/ap-southeast-9/backfill")
        return bool(p["complete"])

    await cluster.wait_for(complete, "backfill complete", 30)
    took_s = time.monotonic() - started
    assert _originals(cluster, "ap-southeast-9") == sorted(u["image_id"] for u in ups)
    total = sum(u["bytes"] for u in ups)
    print(
        f"\nFIGURES uncapped backfill: {len(ups)} images ({total / 1e6:.1f} MB) in {took_s:.2f}s from node start "
        f"({len(ups) / took_s:.0f} images/s, {total / 1e6 / took_s:.1f} MB/s; sweep interval 0.5 s)"
    )
