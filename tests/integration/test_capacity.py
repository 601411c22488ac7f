"""Capacity monitoring and automatic provisioning on a cluster of tiny nodes, with two query services."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common.db.pool import open_pool
from minicdn.embedded import EmbeddedNats
from tests.cluster import TestCluster, make_jpeg

NODE_CAPACITY = 2_000_000  # 2 MB per node


@pytest.fixture
async def tiny(
    tmp_path: Path, database_url: str, nats_server: EmbeddedNats, geoip_db: str
) -> AsyncIterator[TestCluster]:
    spool = tmp_path / "provisioned"
    c = TestCluster(
        tmp_path,
        database_url,
        nats_server.url,
        geoip_db,
        node_capacity_bytes=NODE_CAPACITY,
        extra={
            "capacity": {
                "interval_s": 0.2,
                "sample_interval_s": 0.2,
                "high_water": 0.8,
                "critical": 0.95,
                "provision_timeout_s": 30,
            },
            "provisioner": {"kind": "local", "local_dir": str(spool), "local_node_capacity_bytes": NODE_CAPACITY},
        },
    )
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
        cur = await conn.execute(sql)
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

    events = await _rows(
        tiny,
        "SELECT kind, state, set_id, reason, outcome,"
        " extract(epoch FROM finished_at - created_at)::float8 AS took_s"
        " FROM provisioning_events ORDER BY event_id",
    )
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
        await tiny.wait_ready(str(o["image_id"]))
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
    took = [
        e
        for e in await _rows(
            tiny,
            "SELECT extract(epoch FROM finished_at - created_at)::float8 AS s"
            " FROM provisioning_events WHERE kind = 'new_set'",
        )
    ]
    print(
        f"\nFIGURES provisioning: plan -> 3 nodes registered and healthy in {took[0]['s']:.2f}s; first upload on "
        f"the new set {landed_s:.2f}s after the filling started; reason: {new_sets[0]['reason']}"
    )

    # Filling on: the old set passes the high-water mark and is closed; from then on uploads go to set-2 only.
    async def set_1_closed() -> bool:
        return (await _rows(tiny, "SELECT state FROM sets WHERE set_id = 'set-1'"))[0]["state"] == "closed"

    for seed in range(30):
        if await set_1_closed():
            break
        data = make_jpeg(480, 360, seed=200 + seed)
        status, ticket = await tiny.api("POST", "/v1/uploads", json={"size": len(data), "client_ip": "3.0.1.10"})
        assert status == 201, ticket
        assert (await tiny.put(ticket["upload_url"], data))[0] == 201
        await asyncio.sleep(0.3)
    await tiny.wait_for(set_1_closed, "set-1 closed at the high-water mark", 5)
    closed = await _rows(tiny, "SELECT reason FROM provisioning_events WHERE kind = 'set_closed' AND set_id = 'set-1'")
    assert len(closed) == 1 and "high water 80%" in str(closed[0]["reason"])
    await asyncio.sleep(0.5)  # every query service has reloaded the set's state
    for _ in range(3):
        ticket = await tiny.request_upload(size=1000, client_ip="3.0.1.10")
        assert ticket["node_id"].endswith("-2")


async def _state_of(cluster: TestCluster, set_id: str) -> str:
    rows = await _rows(cluster, f"SELECT state FROM provisioning_events WHERE set_id = '{set_id}' AND kind = 'new_set'")
    return str(rows[0]["state"]) if rows else ""


async def test_a_new_leader_resumes_a_recorded_plan_instead_of_making_another(
    cluster: TestCluster, tmp_path: Path
) -> None:
    """A leader recorded a plan and crashed before calling the provisioner: the next leader calls it once,
    with the same plan id, and plans nothing else while it is in flight."""
    import json
    import sys

    from common.db import control as db_control
    from query_service.monitor import CapacityMonitor
    from query_service.provisioners import CommandProvisioner, Plan, PlannedNode

    calls = tmp_path / "calls.jsonl"
    script = tmp_path / "provision.py"
    script.write_text(f"import sys\nopen({str(calls)!r}, 'a').write(sys.stdin.read() + '\\n')\nprint('queued')\n")
    settings = cluster.settings(
        provisioner={"kind": "command", "command": f"{sys.executable} {script}"},
        capacity={"provision_timeout_s": 1.0, "provision_headroom": 2.0},
    )  # always wants more
    async with open_pool(settings.database, run_migrations=False) as pool:
        event_id = await db_control.new_event_id(pool)
        plan = Plan(event_id, "new_set", "set-9", "test", (PlannedNode("us-east-9", "us-east", "set-9", 39.0, -77.5),))
        await db_control.record_event(
            pool,
            "new_set",
            "test",
            state="planned",
            set_id="set-9",
            plan=plan.to_dict(),
            provisioner="command",
            event_id=event_id,
        )
        monitor = CapacityMonitor(settings, pool, CommandProvisioner(settings))
        await monitor.tick()
        await monitor.tick()
        sent = [json.loads(line) for line in calls.read_text().splitlines() if line.strip()]
        assert [p["plan_id"] for p in sent] == [event_id] and sent[0]["nodes"][0]["node_id"] == "us-east-9"
        rows = await db_control.in_flight(pool)
        assert [(r["event_id"], r["state"], r["outcome"]) for r in rows] == [(event_id, "running", "queued")]
        await asyncio.sleep(1.1)
        await monitor.tick()  # its nodes never came: failed, and only then a new plan is made
        events = await db_control.recent_events(pool)
        states = {e["event_id"]: e["state"] for e in events if e["kind"] == "new_set"}
        assert states[event_id] == "failed"
        assert len(states) == 2  # the retry is a new, recorded plan
        new = next(e for e in events if e["kind"] == "new_set" and e["event_id"] != event_id)
        assert new["plan"] is not None
        assert new["plan"]["set_id"] == "set-10" and new["state"] == "running"  # after set-9 in the plan's name space


async def test_webhook_and_failing_provisioners(cluster: TestCluster) -> None:
    import hashlib
    import hmac
    import json

    from aiohttp import web

    from common.procs import free_port
    from query_service.provisioners import (
        CommandProvisioner,
        Plan,
        PlannedNode,
        ProvisionError,
        WebhookProvisioner,
    )

    got: list[tuple[bytes, str]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append((await request.read(), request.headers["X-Minicdn-Signature"]))
        return web.json_response({"ok": True}, status=202 if len(got) == 1 else 500)

    app = web.Application()
    app.router.add_post("/provision", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        settings = cluster.settings(
            provisioner={"kind": "webhook", "webhook_url": f"http://127.0.0.1:{port}/provision"}
        )
        plan = Plan(7, "new_set", "set-2", "test", (PlannedNode("us-east-2", "us-east", "set-2", 39.0, -77.5),))
        assert "accepted" in await WebhookProvisioner(settings).provision(plan)
        body, signature = got[0]
        assert json.loads(body)["plan_id"] == 7
        kid, mac = signature.split(":")
        key = settings.signing_key(kid)
        assert key is not None and hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).hexdigest())
        with pytest.raises(ProvisionError, match="500"):
            await WebhookProvisioner(settings).provision(plan)
    finally:
        await runner.cleanup()
    failing = cluster.settings(provisioner={"kind": "command", "command": "false"})
    with pytest.raises(ProvisionError, match="exited 1"):
        await CommandProvisioner(failing).provision(plan)
    missing = cluster.settings(provisioner={"kind": "command", "command": "/nonexistent/provision"})
    with pytest.raises(ProvisionError, match="cannot run"):
        await CommandProvisioner(missing).provision(plan)


async def test_a_dead_node_is_replaced_automatically_after_the_grace_period(
    tmp_path: Path, database_url: str, nats_server: EmbeddedNats, geoip_db: str
) -> None:
    """A node silent past `dead_after_s` is marked dead; after `auto_replace_after_s` the leader provisions a
    replacement in the same set and region, which backfills every image of the set."""
    spool = tmp_path / "provisioned"
    c = TestCluster(
        tmp_path,
        database_url,
        nats_server.url,
        geoip_db,
        extra={
            "health": {"dead_after_s": 1.0},
            "capacity": {"interval_s": 0.2, "auto_replace_after_s": 0.5, "provision_timeout_s": 30},
            "provisioner": {"kind": "local", "local_dir": str(spool)},
        },
    )
    await c.start()
    supervisor = asyncio.create_task(c.supervise(spool))
    try:
        ups = [await c.upload(make_jpeg(320, 240, seed=600 + i), client_ip="3.0.1.10") for i in range(4)]
        for up in ups:
            await c.wait_replicated(up["image_id"])
        started = time.monotonic()
        await c.stop_node("ap-southeast-1")

        async def replaced() -> bool:
            rows = await _rows(c, "SELECT node_id, state FROM nodes WHERE region = 'ap-southeast' ORDER BY node_id")
            return [(r["node_id"], r["state"]) for r in rows] == [
                ("ap-southeast-1", "dead"),
                ("ap-southeast-r2", "active"),
            ]

        await c.wait_for(replaced, "automatic replacement", 20)

        async def backfilled() -> bool:
            states = [await c.replicas(u["image_id"]) for u in ups]
            return all(s.get("ap-southeast-r2") == "ok" and "ap-southeast-1" not in s for s in states)

        await c.wait_for(backfilled, "replacement backfilled", 20)
        took_s = time.monotonic() - started
        for up in ups:
            assert c.disk_sha256("ap-southeast-r2", up["image_id"]) == up["sha256"]

        async def recorded() -> bool:
            events = await _rows(c, "SELECT kind, state, reason FROM provisioning_events ORDER BY event_id")
            return [(e["kind"], e["state"]) for e in events] == [("node_state", "done"), ("replace", "succeeded")]

        await c.wait_for(recorded, "events recorded", 10)
        print(
            f"\nFIGURES automatic replacement: node stopped -> dead -> replaced and backfilled ({len(ups)} images) "
            f"in {took_s:.2f}s (dead_after_s 1.0, auto_replace_after_s 0.5)"
        )
    finally:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        await c.stop()
