"""Capacity monitoring and automatic provisioning on a cluster of tiny nodes, with two query services."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common.db.pool import open_pool
from common.embedded import EmbeddedNats
from tests.cluster import TestCluster, make_jpeg

NODE_CAPACITY = 2_000_000  # 2 MB per node


@pytest.fixture
async def tiny(tmp_path: Path, database_url: str, nats_server: EmbeddedNats,
               geoip_db: str) -> AsyncIterator[TestCluster]:
    spool = tmp_path / "provisioned"
    c = TestCluster(tmp_path, database_url, nats_server.url, geoip_db, node_capacity_bytes=NODE_CAPACITY, extra={
        "capacity": {"interval_s": 0.2, "sample_interval_s": 0.2, "high_water": 0.8, "critical": 0.95,
                     "provision_timeout_s": 30},
        "provisioner": {"kind": "local", "local_dir": str(spool), "local_node_capacity_bytes": NODE_CAPACITY},
    })
    await c.start()
    supervisor = asyncio.create_task(c.supervise(spool))
    try:
        yield c
    finally:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        await c.stop()


async def _rows(cluster: TestCluster, sql: str) -> list[dict[str, object]]:
    async with open_pool(cluster.settings().database, run_migrations=False) as pool, pool.connection() as conn:
        cur = await conn.execute(sql)  # type: ignore[arg-type]
        return list(await cur.fetchall())


async def test_filling_a_set_provisions_exactly_one_new_set_with_two_query_services(tiny: TestCluster) -> None:
    second = await tiny.start_query("query2")
    assert second
    old: list[dict[str, object]] = []
    started = time.monotonic()
    for seed in range(40):  # ~200 KB each: the 2 MB nodes pass the marks after a handful
        data = make_jpeg(480, 360, seed=100 + seed)
        status, ticket = await tiny.api("POST", "/v1/uploads", json={"size": len(data), "client_ip": "3.0.1.10"})
        if status == 503:
            assert ticket["error"]["code"] == "no_capacity"
            await asyncio.sleep(0.2)
            continue
        assert status == 201, ticket
        put_status, body = await tiny.put(ticket["upload_url"], data)
        assert put_status == 201, body
        old.append({**ticket, **body})
        if any(str(o["node_id"]).endswith("-2") for o in old):
            break
        await asyncio.sleep(0.25)  # let heartbeats report the usage, as real traffic would
    on_new = [o for o in old if str(o["node_id"]).endswith("-2")]
    assert on_new, "new uploads never landed on a provisioned set"
    landed_s = time.monotonic() - started

    events = await _rows(tiny, "SELECT kind, state, set_id, reason, outcome,"
                                " extract(epoch FROM finished_at - created_at)::float8 AS took_s"
                                " FROM provisioning_events ORDER BY event_id")
    new_sets = [e for e in events if e["kind"] == "new_set"]
    await asyncio.sleep(1.5)  # several more ticks of both monitors: still exactly one
    events = await _rows(tiny, "SELECT kind, state, set_id FROM provisioning_events WHERE kind = 'new_set'")
    assert len(events) == 1 and events[0]["set_id"] == "set-2", events
    async def succeeded() -> bool:
        return await _state_of(tiny, "set-2") == "succeeded"

    await tiny.wait_for(succeeded, "provisioning recorded", 10)
    sets = await _rows(tiny, "SELECT set_id, state FROM sets ORDER BY set_id")
    assert [s["set_id"] for s in sets] == ["set-1", "set-2"]
    nodes = await _rows(tiny, "SELECT node_id, set_id FROM nodes WHERE set_id = 'set-2' ORDER BY node_id")
    assert [n["node_id"] for n in nodes] == ["ap-southeast-2", "eu-west-2", "us-east-2"]

    # Old images are still served; the full set was closed (or is about to be) and the leader was one instance.
    for o in old[:3]:
        status, found = await tiny.api("GET", f"/v1/images/{o['image_id']}/url", params={"w": 150})
        assert status == 200, found
        assert tiny.session is not None
        async with tiny.session.get(found["url"]) as resp:
            assert resp.status == 200
    from query_service import keys

    leaders = [tiny.apps[n][keys.MONITOR].is_leader for n in ("query", "query2")]
    assert sorted(leaders) == [False, True]
    status, view = await tiny.api("GET", "/v1/nodes")
    assert status == 200
    by_set = {s["name"]: s for s in view["sets"]}
    assert by_set["set-1"]["used_ratio"] > 0.5 and by_set["set-2"]["state"] == "open"
    assert {r["name"] for r in view["regions"]} == {"us-east", "eu-west", "ap-southeast"}
    assert any(e["kind"] == "new_set" and e["state"] == "succeeded" for e in view["events"])
    took = [e for e in await _rows(tiny, "SELECT extract(epoch FROM finished_at - created_at)::float8 AS s"
                                         " FROM provisioning_events WHERE kind = 'new_set'")]
    print(f"\nFIGURES provisioning: plan -> 3 nodes registered and healthy in {took[0]['s']:.2f}s; first upload on "
          f"the new set {landed_s:.2f}s after the filling started; reason: {new_sets[0]['reason']}")


async def _state_of(cluster: TestCluster, set_id: str) -> str:
    rows = await _rows(cluster, f"SELECT state FROM provisioning_events WHERE set_id = '{set_id}'"
                                " AND kind = 'new_set'")
    return str(rows[0]["state"]) if rows else ""
