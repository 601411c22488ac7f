"""GET /v1/dashboard (admin only) and the pages and assets the query service serves; CORS on uploads."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from common.db.api_keys import create_key
from common.db.pool import open_pool
from tests.cluster import TestCluster, make_jpeg


async def _get(cluster: TestCluster, path: str, headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
    assert cluster.session is not None
    resp = await cluster.session.get(f"{cluster.query_url}{path}", headers=headers or {})
    await resp.read()
    return resp


async def test_dashboard_data_needs_an_admin_key(cluster: TestCluster) -> None:
    resp = await _get(cluster, "/v1/dashboard")
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"
    resp = await _get(cluster, "/v1/dashboard", {"Authorization": "Bearer wrong"})
    assert resp.status == 401
    async with open_pool(cluster.settings().database) as pool:
        _key, app_only = await create_key(pool, "app-only", ("app",))
    resp = await _get(cluster, "/v1/dashboard", {"Authorization": f"Bearer {app_only}"})
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "forbidden"


async def test_dashboard_data_describes_the_cluster(cluster: TestCluster) -> None:
    image = await cluster.upload(make_jpeg(300, 200, seed=5))
    await cluster.wait_replicated(image["image_id"])
    status, nodes = await cluster.api("GET", "/v1/nodes")
    assert status == 200

    async def settled() -> bool:
        _s, d = await cluster.api("GET", "/v1/dashboard")
        return bool(d["summary"]["objects"] == 3 and d["summary"]["pending_replicas"] == 0)

    await cluster.wait_for(settled, "heartbeats and stats after the upload")
    fields = ("region", "set_id", "state", "capacity_bytes", "used_bytes", "free_bytes", "objects", "healthy")
    seen: dict[str, Any] = {}

    async def agree() -> bool:
        # Two requests read two heartbeats apart at worst, and free_bytes follows the real disk (shared with
        # other writers): compare until one pair of reads saw the same heartbeat.
        _s, seen["data"] = await cluster.api("GET", "/v1/dashboard")
        _s, seen["nodes"] = await cluster.api("GET", "/v1/nodes")
        by_id = {n["node_id"]: n for n in seen["data"]["nodes"]}
        return all(
            api_node["node_id"] in by_id and all(by_id[api_node["node_id"]][k] == api_node[k] for k in fields)
            for api_node in seen["nodes"]["nodes"]
        )

    await cluster.wait_for(agree, "the dashboard and /v1/nodes to agree on every node")
    data, nodes = seen["data"], seen["nodes"]
    s = data["summary"]
    assert (s["nodes"], s["healthy_nodes"], s["regions"], s["sets"]) == (3, 3, 3, 1)
    assert s["under_replicated"] == 0
    by_id = {n["node_id"]: n for n in data["nodes"]}
    assert s["used_bytes"] == sum(n["used_bytes"] for n in nodes["nodes"])
    for api_node in nodes["nodes"]:
        node = by_id[api_node["node_id"]]
        assert node["used_ratio"] == round(api_node["used_bytes"] / api_node["capacity_bytes"], 4)
        assert "days_until_full" in node and "point" not in node and "last_seen" not in node
    (only_set,) = data["sets"]
    assert only_set["set_id"] == "set-1" and sorted(only_set["regions"]) == ["ap-southeast", "eu-west", "us-east"]
    assert isinstance(data["events"], list)
    # The capacity monitor's report reaches the dashboard (headroom before the set closes is known at once;
    # growth and days until full need a few usage samples first).
    assert only_set["headroom_bytes"] is not None and only_set["headroom_bytes"] > 0
    assert "days_until_open_sets_close" in s and all("growth_bytes_per_day" in n for n in data["nodes"])
    # Replication lag reported by the two replicas' heartbeats.
    await cluster.wait_for(lambda: _lag_reported(cluster), "replication lag in the heartbeats")


async def _lag_reported(cluster: TestCluster) -> bool:
    _s, d = await cluster.api("GET", "/v1/dashboard")
    return d["summary"]["replication_lag_max_s"] is not None and d["summary"]["replication_lag_max_s"] > 0


async def test_dashboard_history_charts_recent_activity(cluster: TestCluster) -> None:
    """The JSON carries the history the charts draw: after uploads, the upload and copy rates rise above
    zero, used bytes grow and replication lag is charted; the series stay aligned and bounded."""

    async def baseline() -> bool:  # rates are differences of the nodes' running totals: read them once first
        _s, doc = await cluster.api("GET", "/v1/dashboard")
        return len(doc["history"]["t"]) >= 1

    await cluster.wait_for(baseline, "the dashboard's first reading of the nodes", timeout_s=15)
    _s, before = await cluster.api("GET", "/v1/dashboard")
    used_before = before["summary"]["used_bytes"]
    for seed in range(3):
        image = await cluster.upload(make_jpeg(300, 200, seed=40 + seed))
        await cluster.wait_replicated(image["image_id"])
    seen: dict[str, Any] = {}

    async def charted() -> bool:
        _s, doc = await cluster.api("GET", "/v1/dashboard")
        history = seen["history"] = doc["history"]
        series = history["series"]
        return (
            len(history["t"]) >= 3
            and any((v or 0) > 0 for v in series["uploads_per_s"])
            and any((v or 0) > 0 for v in series["replicated_per_s"])
            and any(v is not None and v > used_before for v in series["used_bytes"])
            and any(v is not None for v in series["replication_lag_max_s"])
        )

    try:
        await cluster.wait_for(charted, "the uploads and their copies in the dashboard's history", timeout_s=30)
    except AssertionError as exc:
        series = seen.get("history", {}).get("series", {})
        last = {name: values[-10:] for name, values in series.items()}
        raise AssertionError(f"{exc}; used before {used_before}; the series' last 10 points: {last}") from None
    history = seen["history"]
    assert history["window_s"] == 3600 and history["step_s"] == 1
    assert len(history["t"]) <= history["window_s"] / history["step_s"]
    assert history["t"] == sorted(history["t"]) and history["t"][-1] <= time.time() + 1
    assert all(len(values) == len(history["t"]) for values in history["series"].values())
    assert set(history["forecast"]) == {"growth_bytes_per_day", "days_until_full"}


async def test_pages_and_assets(cluster: TestCluster) -> None:
    resp = await _get(cluster, "/dashboard")
    assert resp.status == 200 and resp.content_type == "text/html"
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    html = await resp.text()
    assert "http" not in html.replace("http-equiv", "")  # no external asset: works offline
    scripts = ("dashboard.js", "charts.js", "auth.js")
    for name, ctype in (*((s, "text/javascript") for s in scripts), ("style.css", "text/css")):
        asset = await _get(cluster, f"/assets/{name}")
        assert asset.status == 200 and asset.content_type == ctype
        again = await _get(cluster, f"/assets/{name}", {"If-None-Match": asset.headers["ETag"]})
        assert again.status == 304
    for bad in ("/assets/missing.js", "/assets/dashboard.html", "/assets/..%2Fapp.py", "/assets/app.py"):
        resp = await _get(cluster, bad)
        assert resp.status == 404, bad


async def test_upload_cors_preflight_and_error_headers(cluster: TestCluster) -> None:
    assert cluster.session is not None
    ticket = await cluster.request_upload()
    headers = {
        "Origin": "http://app.example",
        "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "content-type",
    }
    async with cluster.session.options(ticket["upload_url"], headers=headers) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "PUT" in resp.headers["Access-Control-Allow-Methods"]
        assert "Content-Type" in resp.headers["Access-Control-Allow-Headers"]
    async with cluster.session.put(
        ticket["upload_url"], data=b"not an image", headers={"Origin": "http://app.example"}
    ) as resp:
        assert resp.status == 415
        assert resp.headers["Access-Control-Allow-Origin"] == "*"  # the page can read the JSON error
    node_url = cluster.node_settings[ticket["node_id"]].node.base_url
    async with cluster.session.get(f"{node_url}/healthz") as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers  # only uploads are cross-origin
