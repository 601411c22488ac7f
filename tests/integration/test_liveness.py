"""Node liveness over NATS and Postgres, each independent of the other, and the stop announcement: real
Postgres, nats-server and libvips, in-process nodes and query service.

nats-server is stopped for real (and started again on the same port and store); Postgres is hung for real
(every one of its processes SIGSTOPped, then SIGCONTed). Both are restored whatever the test does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp import web

from common.config import DatabaseSettings, NodeSettings, Secret
from common.db import nodes as db_nodes
from common.db import replicas as db_replicas
from common.db.pool import open_pool
from common.db.rows import Pool
from common.geo import REGIONS
from common.holders import rank_holders
from minicdn.embedded import EmbeddedNats, EmbeddedPostgres
from query_service import keys as query_keys
from query_service.registry import NodeRegistry
from storage_node import keys as node_keys
from storage_node.objects.dirlock import DirLocked
from tests.cluster import NODE_REGIONS, REGION_IPS, MakeCluster, TestCluster, make_jpeg

EU_CLIENT = REGION_IPS["eu-west"][1]
PUBLISH_TIMEOUT_S = 5.0  # JetStream's publish timeout: the wait a 201 used to add while NATS was down


async def _url(cluster: TestCluster, image_id: str, client_ip: str = EU_CLIENT) -> dict[str, Any]:
    status, body = await cluster.api("GET", f"/v1/images/{image_id}/url", params={"client_ip": client_ip})
    assert status == 200, body
    return dict(body)


async def _stored(cluster: TestCluster, seed: int) -> str:
    up = await cluster.upload(make_jpeg(320, 240, seed=seed), client_ip=REGION_IPS["us-east"][1])
    await cluster.wait_replicated(up["image_id"])
    await cluster.wait_ready(up["image_id"])
    return str(up["image_id"])


# --- the registry: either source keeps a node alive; a stop from either side holds ---------------------------
async def test_either_source_keeps_a_node_alive_and_a_stop_told_by_either_holds(database_url: str) -> None:
    from common.events import NodeHeartbeat

    timeout_s = 1.0
    point = REGIONS["us-east"]
    node = NodeSettings(node_id="n1", region="us-east", lat=point.lat, lon=point.lon, base_url="http://n1")
    beat = NodeHeartbeat("n1", "us-east", "set-1", 100, 0, 100, 0, 0, "t", 0.0)

    async with open_pool(DatabaseSettings(url=Secret(database_url))) as pool:
        await db_nodes.register_node(pool, node, "t")
        await db_nodes.record_heartbeat(pool, "n1", 100, 0, 100, 0)
        reg = NodeRegistry(timeout_s)
        await reg.reload(pool)
        assert reg.healthy(reg.nodes["n1"])

        # NATS down: no beat over NATS for 1.5 timeouts, the row's heartbeat (read at each reload) keeps it alive.
        for _ in range(6):
            await asyncio.sleep(timeout_s / 4)
            await db_nodes.record_heartbeat(pool, "n1", 100, 0, 100, 0)
            await reg.reload(pool)
            assert reg.healthy(reg.nodes["n1"])
        # Postgres not written (its heartbeat failing): NATS beats keep it alive, through reloads of the old row.
        for _ in range(6):
            await asyncio.sleep(timeout_s / 4)
            reg.on_heartbeat(beat)
            await reg.reload(pool)
            assert reg.healthy(reg.nodes["n1"])
        # Neither: out within the timeout (the checks above could fail).
        await asyncio.sleep(timeout_s)
        await reg.reload(pool)
        assert not reg.healthy(reg.nodes["n1"])

        # A stop told over NATS only (Postgres was down): out at once, and a reload of the row does not undo it.
        reg.on_heartbeat(beat)
        await db_nodes.record_heartbeat(pool, "n1", 100, 0, 100, 0)
        await reg.reload(pool)
        assert reg.healthy(reg.nodes["n1"])
        reg.on_heartbeat(replace(beat, stopping=True))
        assert not reg.healthy(reg.nodes["n1"])
        await reg.reload(pool)
        assert not reg.healthy(reg.nodes["n1"])
        # A stop told in Postgres only (NATS was down): another query service learns it at its next reload,
        # though the node's last heartbeat is fresh.
        other = NodeRegistry(timeout_s)
        await other.reload(pool)
        assert other.healthy(other.nodes["n1"])
        await db_nodes.record_stopping(pool, "n1")
        await other.reload(pool)
        assert not other.healthy(other.nodes["n1"])
        # The node's own miss path and replicator read the same from Postgres.
        rows = await db_nodes.list_nodes(pool)
        assert rows[0]["stopping_age_s"] is not None and rows[0]["heartbeat_age_s"] is not None

        # A restart registers again (clearing the stop) and beats: back in both.
        await db_nodes.register_node(pool, node, "t")
        await db_nodes.record_heartbeat(pool, "n1", 100, 0, 100, 0)
        for registry in (reg, other):
            await registry.reload(pool)
            assert registry.healthy(registry.nodes["n1"])


# --- NATS down: uploads answer without waiting on a publish, lookups go on, nodes stay healthy ----------------
async def test_nats_outage_uploads_and_lookups_go_on_and_replication_catches_up(
    make_cluster: MakeCluster, nats_server: EmbeddedNats
) -> None:
    cluster = await make_cluster()
    known = await _stored(cluster, seed=1)
    timeout_s = cluster.node_settings["us-east-1"].health.heartbeat_timeout_s
    uploaded: list[str] = []
    # Off the loop: the in-process nodes and query service keep beating however long nats-server takes to
    # stop (a blocking call would freeze them all, and the heartbeats would lapse because of the test).
    await asyncio.to_thread(nats_server.stop)
    try:
        ends = time.monotonic() + 2.5 * timeout_s  # long past the point where lapsed heartbeats would show
        seed = 2
        while time.monotonic() < ends:
            ticket = await cluster.request_upload(client_ip=REGION_IPS[NODE_REGIONS[seed % 3]][1])
            started = time.monotonic()
            status, body = await cluster.put(ticket["upload_url"], make_jpeg(320, 240, seed=seed))
            took = time.monotonic() - started
            assert status == 201, body
            assert took < PUBLISH_TIMEOUT_S, f"an upload waited {took:.1f}s: it waited on the NATS publish"
            # Answered while the publish of its event still waits on NATS, in the background.
            assert cluster.apps[ticket["node_id"]][node_keys.PUBLISHER].in_flight >= 1
            uploaded.append(ticket["image_id"])
            seed += 1
            for region in NODE_REGIONS:  # each region's client still gets its own region's node
                assert (await _url(cluster, known, REGION_IPS[region][1]))["region"] == region
            assert cluster.healthy_count(3)
        assert len(uploaded) >= 2
    finally:
        await asyncio.to_thread(nats_server.start)
    for image_id in uploaded:  # the pending-row sweep (and the stream, once back) copies them everywhere
        await cluster.wait_replicated(image_id)
        await cluster.wait_ready(image_id)
    assert cluster.healthy_count(3)


# --- Postgres hung: the NATS beat goes on -------------------------------------------------------------------
@contextmanager
def _hung(pg: EmbeddedPostgres) -> Iterator[None]:
    """Every process of the embedded Postgres stopped (a hung server: connections open, nothing answers)."""
    assert pg.proc is not None
    root = psutil.Process(pg.proc.pid)
    procs = [root, *root.children(recursive=True)]
    for proc in procs:
        with suppress(psutil.NoSuchProcess):  # a backend already on its way out
            proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        # A child that was a zombie when listed is reaped as soon as the postmaster runs again.
        for proc in procs:
            with suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGCONT)


async def test_a_hung_postgres_does_not_hold_back_the_nats_heartbeats(
    make_cluster: MakeCluster, pg: EmbeddedPostgres
) -> None:
    cluster = await make_cluster()
    timeout_s = cluster.node_settings["us-east-1"].health.heartbeat_timeout_s
    registry = cluster.apps["query"][query_keys.REGISTRY]
    before = {n.node_id: n.last_seen for n in registry.nodes.values()}
    with _hung(pg):
        ends = time.monotonic() + 3 * timeout_s  # the row cannot be read nor written all along
        while time.monotonic() < ends:
            assert cluster.healthy_count(3), "a node went unhealthy while only Postgres was hung"
            await asyncio.sleep(0.05)
        assert all(n.last_seen > before[n.node_id] + 2 * timeout_s for n in registry.nodes.values())
    await cluster.wait_for(lambda: cluster.healthy_count(3), "every node healthy after Postgres came back")


# --- the stop announcement: out of URLs, placement and the holder ranking at once --------------------------------
async def test_a_node_announcing_its_stop_is_out_at_once_and_back_after_a_restart(make_cluster: MakeCluster) -> None:
    # A heartbeat timeout far longer than the test waits: only the announcement can take the node out.
    cluster = await make_cluster(health={"heartbeat_timeout_s": 30.0})
    image_id = await _stored(cluster, seed=3)
    assert (await _url(cluster, image_id))["node_id"] == "eu-west-1"

    await cluster.apps["eu-west-1"][node_keys.HEARTBEATS].announce_stopping()

    async def moved() -> bool:
        return str((await _url(cluster, image_id))["node_id"]) != "eu-west-1"

    await cluster.wait_for(moved, "eu-west-1 out of the URL answers", timeout_s=1.0)
    found = await _url(cluster, image_id)
    alternatives = [a["node_id"] for a in found["alternatives"]]
    assert found["node_id"] == "us-east-1" and alternatives == ["ap-southeast-1"]  # still a fail-over target
    assert (await cluster.request_upload(client_ip=EU_CLIENT))["node_id"] != "eu-west-1"
    # The nodes' miss path and the replicators rank the holders from Postgres: not the stopping node either.
    pool = cluster.apps["query"][query_keys.POOL]
    rows = await _holders(pool, image_id, "ap-southeast-1")
    here = REGIONS["eu-west"]
    assert {h.node_id for h in db_replicas.as_holders(rows)} == {"us-east-1", "eu-west-1"}
    assert [r.node.node_id for r in rank_holders(db_replicas.as_holders(rows), here, 30.0)] == ["us-east-1"]

    await cluster.stop_node("eu-west-1")
    await cluster.start_node("eu-west-1")  # registers again: the stop is over

    async def back() -> bool:
        return str((await _url(cluster, image_id))["node_id"]) == "eu-west-1"

    await cluster.wait_for(back, "eu-west-1 handed out again", timeout_s=5.0)
    rows = await _holders(pool, image_id, "ap-southeast-1")
    assert [r.node.node_id for r in rank_holders(db_replicas.as_holders(rows), here, 30.0)][0] == "eu-west-1"


async def _holders(pool: Pool, image_id: str, me: str) -> list[db_replicas.HolderRow]:
    """The holders a replication job on ``me`` ranks (its copy plan's)."""
    plan = await db_replicas.copy_plan(pool, image_id, me, sha256="")
    assert plan is not None
    return plan["holders"]


# --- one process per data directory ------------------------------------------------------------------------
def _tree(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*"))


async def test_a_second_node_on_a_live_data_directory_fails_at_once_and_touches_nothing(cluster: TestCluster) -> None:
    from common.procs import free_port
    from replicator.node_root import create_node_app

    live = cluster.node_settings["us-east-1"]
    data_dir = Path(live.node.data_dir)
    in_flight = data_dir / "tmp" / "an-upload-in-flight"
    in_flight.write_bytes(b"half an upload")
    before = _tree(data_dir)
    second = replace(live, node=replace(live.node, port=free_port()))
    runner = web.AppRunner(create_node_app(second))
    with pytest.raises(DirLocked) as refused:
        await runner.setup()
    await runner.cleanup()
    assert str(data_dir) in str(refused.value) and f"pid {os.getpid()}" in str(refused.value)
    assert in_flight.read_bytes() == b"half an upload"  # the live node's tmp/ was not emptied
    assert _tree(data_dir) == before
    assert cluster.healthy_count(3)
