"""The capacity marks end to end: a set past the high-water mark is closed for new uploads but its images
are still served and replicated; a node past the critical mark goes `readonly` and still serves.

How a node gets from the high-water mark to the critical one: uploads granted while its set was open
land after it closed (a ticket reserves nothing), which is what the critical mark is the backstop for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from minicdn.embedded import EmbeddedNats
from tests.cluster import REGION_IPS, TestCluster, make_jpeg

CAPACITY = 1_500_000  # per node


@pytest.fixture
async def marks(
    tmp_path: Path, database_url: str, nats_server: EmbeddedNats, geoip_db: str
) -> AsyncIterator[TestCluster]:
    c = TestCluster(
        tmp_path,
        database_url,
        nats_server.url,
        geoip_db,
        node_capacity_bytes=CAPACITY,
        extra={"capacity": {"interval_s": 0.2, "sample_interval_s": 0.2, "high_water": 0.8, "critical": 0.95}},
    )  # the defaults, spelled out; no provisioner
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


async def _view(cluster: TestCluster) -> dict[str, Any]:
    status, view = await cluster.api("GET", "/v1/nodes")
    assert status == 200, view
    return dict(view)


def _node(view: dict[str, Any], node_id: str) -> dict[str, Any]:
    return next(n for n in view["nodes"] if n["node_id"] == node_id)


async def _served(cluster: TestCluster, image_id: str, region: str) -> str:
    """The node a client in ``region`` is sent to for the original, after fetching it from there."""
    status, found = await cluster.api(
        "GET", f"/v1/images/{image_id}/url", params={"variant": "original", "client_ip": REGION_IPS[region][1]}
    )
    assert status == 200, found
    assert cluster.session is not None
    async with cluster.session.get(found["url"], allow_redirects=False) as resp:
        assert resp.status == 200, (found, resp.status)
        await resp.read()
    return str(found["node_id"])


async def test_high_water_closes_the_set_and_critical_makes_a_node_readonly(marks: TestCluster) -> None:
    c = marks
    await c.stop_node("eu-west-1")  # down while the set fills: it catches up later, into a closed set
    await c.wait_for(lambda: c.healthy_count(2), "eu-west-1 unhealthy", 10)

    async def set_state() -> str:
        return str(next(s for s in (await _view(c))["sets"] if s["name"] == "set-1")["state"])

    # Granted now, while the set is open; sent only after it has closed.
    late = [make_jpeg(480, 360, seed=760 + i) for i in range(4)]
    held = [await c.request_upload(size=len(d), client_ip="3.0.1.10") for d in late]
    assert {t["node_id"] for t in held} == {"us-east-1"}

    # ~7 % of a node each (with its variants): eight at once fill it to ~55 %, then one at a time to 80 %.
    fill = [make_jpeg(480, 360, seed=680 + i) for i in range(8)]
    uploaded = [await c.upload(d, size=len(d), client_ip="3.0.1.10") for d in fill]  # without a size: the max
    await asyncio.gather(*(c.wait_ready(u["image_id"]) for u in uploaded))
    for seed in range(25):
        if await set_state() == "closed":
            break
        data = make_jpeg(480, 360, seed=700 + seed)
        status, ticket = await c.api("POST", "/v1/uploads", json={"size": len(data), "client_ip": "3.0.1.10"})
        if status == 503:  # closed between our check and this request
            assert ticket["error"]["code"] == "no_capacity"
            break
        assert status == 201, ticket
        assert ticket["node_id"] == "us-east-1"
        put_status, body = await c.put(ticket["upload_url"], data)
        assert put_status == 201, body
        uploaded.append({**ticket, **body})
        await c.wait_ready(ticket["image_id"])  # processing adds the variants: count them before the next
        await asyncio.sleep(0.4)  # a heartbeat reports the usage, a monitor tick acts on it
    await c.wait_for(lambda: _closed(c), "set-1 closed at the high-water mark", 5)
    view = await _view(c)
    us = _node(view, "us-east-1")
    assert 0.8 <= us["used_ratio"] < 0.95 and us["state"] == "active", us  # past high water, not critical
    closed = [e for e in view["events"] if e["kind"] == "set_closed"]
    assert len(closed) == 1 and "high water 80%" in closed[0]["reason"], closed
    assert len(uploaded) >= 3
    await c.wait_for(lambda: _registry_sees(c, "us-east-1", "closed"), "the query service reloaded the set", 2)

    # Closed for new uploads, from every region (no other set, no provisioner: 503).
    for region in ("us-east", "ap-southeast", "eu-west"):
        status, body = await c.api("POST", "/v1/uploads", json={"size": 1000, "client_ip": REGION_IPS[region][1]})
        assert status == 503 and body["error"]["code"] == "no_capacity", (region, body)
    # ... but still served,
    for up in uploaded:
        assert await _served(c, up["image_id"], "us-east") == "us-east-1"
        assert await _served(c, up["image_id"], "ap-southeast") == "ap-southeast-1"

    # The uploads granted before the close land now: us-east-1 passes the critical mark and goes `readonly`.
    for ticket, data in zip(held, late, strict=True):
        put_status, body = await c.put(ticket["upload_url"], data)
        assert put_status == 201, body
        uploaded.append({**ticket, **body})

    async def readonly() -> bool:
        return bool(_node(await _view(c), "us-east-1")["state"] == "readonly")

    await c.wait_for(readonly, "us-east-1 readonly past the critical mark", 5)
    view = await _view(c)
    us = _node(view, "us-east-1")
    assert us["used_ratio"] >= 0.95 and us["state_set_by"] == "auto" and us["health"] == "healthy", us
    went = [e for e in view["events"] if e["kind"] == "node_state" and e["node_id"] == "us-east-1"]
    assert [e["outcome"] for e in went] == ["state readonly"] and "critical 95%" in went[0]["reason"], went
    assert await set_state() == "closed"

    # A readonly node still serves (its region's clients are still sent to it) and takes no uploads.
    for up in uploaded:
        await c.wait_ready(up["image_id"])
        assert await _served(c, up["image_id"], "us-east") == "us-east-1"
    status, body = await c.api("POST", "/v1/uploads", json={"size": 1000, "client_ip": "3.0.1.10"})
    assert status == 503 and body["error"]["code"] == "no_capacity"

    # ... and the closed set is still replicated: the member that was down catches up every image,
    # including those that landed after the close, and serves its region again.
    await c.start_node("eu-west-1")
    for up in uploaded:
        await c.wait_replicated(up["image_id"], timeout_s=20)
        assert c.disk_sha256("eu-west-1", up["image_id"]) == up["sha256"]
    await c.wait_for(lambda: c.healthy_count(3), "three healthy nodes", 10)  # after `health.recover_s`
    for up in uploaded:
        assert await _served(c, up["image_id"], "eu-west") == "eu-west-1"
    print(
        f"\nFIGURES capacity marks: set-1 closed after {len(uploaded) - len(held)} uploads; {len(held)} uploads "
        f"granted before the close took us-east-1 to {us['used_ratio']:.0%}: readonly"
    )


def _registry_sees(c: TestCluster, node_id: str, set_state: str) -> bool:
    """Placement reads the query service's node table, reloaded every ``query.node_refresh_s``."""
    from query_service import keys

    return bool(c.apps["query"][keys.REGISTRY].nodes[node_id].set_state == set_state)


async def _closed(c: TestCluster) -> bool:
    return bool(next(s for s in (await _view(c))["sets"] if s["name"] == "set-1")["state"] == "closed")
