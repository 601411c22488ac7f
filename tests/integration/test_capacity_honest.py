"""Honest capacity through the real cluster: three nodes on one file system count its free space once, no
room exceeds what the disk really has free, and after a `node replace` the old node leaves the members, the
health counts and the down badge while the backfill is kept out of the replication lag."""

from __future__ import annotations

import shutil
from typing import Any

from common.geo import REGIONS
from common.procs import free_port
from storage_node import keys as node_keys
from storage_node.objects.store import filesystem_id
from tests.cluster import TestCluster, make_jpeg

SLACK = 256 * 1024 * 1024  # others write to this disk too: free space moves between two reads


async def _dashboard(cluster: TestCluster) -> dict[str, Any]:
    status, data = await cluster.api("GET", "/v1/dashboard")
    assert status == 200, data
    return dict(data)


async def test_three_nodes_on_one_disk_count_it_once(cluster: TestCluster) -> None:
    disk = shutil.disk_usage(cluster.root)
    fs_id = filesystem_id(cluster.root)

    async def reported() -> bool:
        _s, view = await cluster.api("GET", "/v1/nodes")
        return all(set(n["filesystems"]) == {fs_id} for n in view["nodes"])

    await cluster.wait_for(reported, "every node to report its file system")

    async def forecast_span() -> bool:
        return bool((await _dashboard(cluster))["summary"]["forecast_min_span_s"] == 3600.0)

    await cluster.wait_for(forecast_span, "the dashboard to carry the monitor's history span")
    _s, view = await cluster.api("GET", "/v1/nodes")
    data = await _dashboard(cluster)
    real_free = shutil.disk_usage(cluster.root).free
    nodes = view["nodes"]
    assert len(nodes) == 3
    for n in nodes:  # no capacity configured: each node may use the disk, and no more room than it has free
        assert n["configured_capacity_bytes"] == disk.total
        assert n["free_bytes"] <= real_free + SLACK
        assert n["capacity_bytes"] == n["used_bytes"] + n["free_bytes"] <= disk.total

    # Totals count the disk once (they used to add it up three times).
    most_free = max(n["free_bytes"] for n in nodes)
    cluster_view = view["cluster"]
    assert cluster_view["free_bytes"] <= most_free and cluster_view["free_bytes"] <= real_free + SLACK
    assert cluster_view["capacity_bytes"] <= disk.total
    summary = data["summary"]
    assert summary["nodes"] == 3
    assert summary["free_bytes"] <= real_free + SLACK and summary["capacity_bytes"] <= disk.total
    assert summary["free_bytes"] < 2 * min(n["free_bytes"] for n in data["nodes"])
    assert summary["days_until_full"] is None and 0 <= summary["forecast_history_s"] < 3600.0

    print(
        f"\nFIGURES shared disk: nodes' free summed {sum(n['free_bytes'] for n in nodes) / 1e9:.1f} GB,"
        f" counted once {cluster_view['free_bytes'] / 1e9:.1f} GB (statvfs {real_free / 1e9:.1f} GB);"
        f" capacity {cluster_view['capacity_bytes'] / 1e9:.1f} GB of a {disk.total / 1e9:.1f} GB disk"
        f" (was {3 * disk.total / 1e9:.1f} GB); set room {view['sets'][0]['free_bytes'] / 1e9:.1f} GB per member"
    )
    # The set's three members write every image to this one disk: each has a third of its room.
    (set_1,) = view["sets"]
    assert set_1["free_bytes"] * 3 <= most_free + 3
    assert 0 <= set_1["headroom_bytes"] <= set_1["free_bytes"]
    # Forecasts wait for an hour of history (the default); the span behind them is shown.
    assert view["forecast_min_span_s"] == 3600.0 and view["history_s"] < 3600.0
    assert all(n["growth_bytes_per_day"] is None and n["days_until_full"] is None for n in nodes)


async def test_after_a_replace_the_old_node_is_gone_and_backfill_is_not_lag(cluster: TestCluster) -> None:
    ups = [await cluster.upload(make_jpeg(320, 240, seed=900 + i), client_ip="3.0.1.10") for i in range(4)]
    for up in ups:
        await cluster.wait_replicated(up["image_id"])
    await cluster.stop_node("eu-west-1")  # lost for good

    async def down() -> bool:
        return bool((await _dashboard(cluster))["summary"]["healthy_nodes"] == 2)

    await cluster.wait_for(down, "the lost node seen down", 10)
    status, body = await cluster.api(
        "POST", "/v1/nodes/eu-west-1/replace", json={"with": "eu-west-9", "provision": False}
    )
    assert status == 202, body
    data = await _dashboard(cluster)
    assert (data["summary"]["nodes"], data["summary"]["healthy_nodes"]) == (3, 2)  # not complete yet: still down

    port = free_port()
    point = REGIONS["eu-west"]
    cluster.node_settings["eu-west-9"] = cluster.settings(
        node={
            "node_id": "eu-west-9",
            "region": "eu-west",
            "lat": point.lat,
            "lon": point.lon,
            "set_id": "set-1",
            "base_url": f"http://127.0.0.1:{port}",
            "port": port,
            "data_dir": str(cluster.root / "eu-west-9"),
            "heartbeat_interval_s": 0.3,
            "render_threads": 1,
        }
    )
    await cluster.start_node("eu-west-9")

    async def complete() -> bool:
        _s, p = await cluster.api("GET", "/v1/nodes/eu-west-9/backfill")
        return bool(p["complete"])

    await cluster.wait_for(complete, "backfill complete", 20)

    async def settled() -> bool:
        d = await _dashboard(cluster)
        s = d["summary"]
        return bool(s["healthy_nodes"] == 3 and s["pending_replicas"] == 0 and s["backfill_replicas"] == 0)

    await cluster.wait_for(settled, "the replacement healthy on the dashboard", 10)
    data = await _dashboard(cluster)
    s = data["summary"]
    assert (s["nodes"], s["healthy_nodes"]) == (3, 3)  # "3 / 3", no "1 node down"
    assert data["replaced_nodes"] == ["eu-west-1"]
    assert sorted(n["node_id"] for n in data["nodes"]) == ["ap-southeast-1", "eu-west-9", "us-east-1"]
    (set_1,) = data["sets"]
    assert set_1["regions"] == ["ap-southeast", "eu-west", "us-east"]  # eu-west once
    assert all(r["nodes"] == r["healthy_nodes"] == 1 for r in data["regions"])

    # The four copies were backfill: counted apart, never as replication lag.
    metrics = cluster.apps["eu-west-9"][node_keys.METRICS].replication
    assert metrics.backfilled == len(ups) and metrics.recent.summary() == (None, None)
    new = next(n for n in data["nodes"] if n["node_id"] == "eu-west-9")
    assert new["replication_lag_max_s"] is None and new["backfill_replicas"] == 0

    _s, view = await cluster.api("GET", "/v1/nodes")
    old = next(n for n in view["nodes"] if n["node_id"] == "eu-west-1")
    assert old["health"] == "replaced" and old["replaced"]
    assert view["sets"][0]["nodes"] == [n for n in view["sets"][0]["nodes"] if n != "eu-west-1"]
    assert "eu-west-1" not in view["sets"][0]["nodes"]

    # A new upload is replication again: its copy on the new member is lag, not backfill.
    up = await cluster.upload(make_jpeg(320, 240, seed=990), client_ip="3.0.1.10")
    await cluster.wait_replicated(up["image_id"])
    assert up["node_id"] != "eu-west-9" and (await cluster.replicas(up["image_id"]))["eu-west-9"] == "ok"
    assert metrics.recent.summary()[1] is not None and metrics.backfilled == len(ups)


async def test_growth_is_the_least_squares_slope_of_the_samples(cluster: TestCluster) -> None:
    """Two hours of samples growing 3600 B/h with one burst (a big upload, deleted again) just before the
    last sample (where it weighs most on a fit): first-to-last says 5.5x the growth; the slope half of that."""
    from common.db import control as db_control
    from common.db.pool import open_pool

    async with open_pool(cluster.settings().database, run_migrations=False) as pool, pool.connection() as conn:
        # A node of its own that never heartbeats, so the monitor adds no real samples of it meanwhile.
        await conn.execute(
            "INSERT INTO nodes (node_id, region, set_id, base_url, lat, lon, state)"
            " VALUES ('slope-1', 'slope', 'set-1', 'http://127.0.0.1:9', 0, 0, 'dead')"
        )
        for minute in range(0, 121, 10):
            used = 100_000 + 60 * minute + (32_400 if minute == 120 else 0)
            await conn.execute(
                "INSERT INTO capacity_samples (node_id, sampled_at, used_bytes, objects)"
                " VALUES ('slope-1', now() - make_interval(mins => %s), %s, 0)",
                (120 - minute, used),
            )
        span_s, slope = (await db_control.growth_samples(pool, 3 * 3600))["slope-1"]
    assert abs(span_s - 7200.0) < 5 and slope is not None  # each INSERT has its own now()
    first_to_last = (60 * 120 + 32_400) / 7200  # 5.5 B/s
    assert 1.0 < slope < 0.6 * first_to_last  # 1 B/s underneath; the burst moves it half as far
    print(f"\nFIGURES growth: least-squares {slope * 86400:.0f} B/day vs first-to-last {first_to_last * 86400:.0f}")
