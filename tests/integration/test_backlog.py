"""Processing keeps up or pushes back. With processing held up (every node's sandbox jobs wait on a gate), uploads
are still acknowledged (`201`: durable, not yet processed); each node reports its backlog (heartbeat, /metrics);
once every node is at `pipeline.max_backlog`, a ticket gets `503 processing_backlog` with `Retry-After` and
nothing is created. Let go, processing drains the queue and tickets are issued again."""

from __future__ import annotations

import asyncio
from typing import Any, TypedDict

import pytest

from common.db.rows import fetch_one
from query_service import keys as query_keys
from storage_node import keys as node_keys
from tests.cluster import REGION_IPS, MakeCluster, TestCluster, make_jpeg

MAX_BACKLOG = 2


async def _backlog(cluster: TestCluster, node_id: str) -> float:
    assert cluster.session is not None
    async with cluster.session.get(f"{cluster.node_settings[node_id].node.base_url}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith("minicdn_processing_backlog "):
            return float(line.split()[1])
    raise AssertionError("no minicdn_processing_backlog on /metrics")


class CountRow(TypedDict):
    n: int


async def _images(cluster: TestCluster) -> int:
    row = await fetch_one(cluster.apps["query"][query_keys.POOL], CountRow, "SELECT count(*) AS n FROM images")
    assert row is not None
    return row["n"]


async def test_uploads_are_acknowledged_while_processing_lags_and_tickets_wait_past_the_backlog(
    make_cluster: MakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = await make_cluster(pipeline={"max_backlog": MAX_BACKLOG})
    gate = asyncio.Event()
    for node_id in cluster.node_settings:
        sandbox = cluster.apps[node_id][node_keys.PROCESSOR].sandbox
        run = sandbox.run

        async def held(job: dict[str, Any], timeout_s: float | None = None, run: Any = run) -> dict[str, Any]:
            await gate.wait()
            return dict(await run(job, timeout_s))

        monkeypatch.setattr(sandbox, "run", held)

    uploaded: list[str] = []
    refused: tuple[int, dict[str, Any], dict[str, str]] | None = None
    ips = [ip for _net, ip in REGION_IPS.values()]
    assert cluster.session is not None
    for i in range(40):  # round the regions until the query service says every node is at its backlog
        async with cluster.session.post(
            f"{cluster.query_url}/v1/uploads", json={"client_ip": ips[i % len(ips)]}, headers=cluster.auth
        ) as resp:
            answer = (resp.status, await resp.json(), dict(resp.headers))
        if answer[0] == 503:
            refused = answer
            break
        assert answer[0] == 201, answer
        status, body = await cluster.put(answer[1]["upload_url"], make_jpeg(seed=100 + i))
        assert status == 201 and body["status"] == "uploaded", body  # durable, acknowledged: not processed
        uploaded.append(body["image_id"])
        await asyncio.sleep(0.35)  # a heartbeat (0.3 s) carries the node's new backlog
    assert refused is not None, f"no ticket refused after {len(uploaded)} uploads"
    status, body, headers = refused
    assert body["error"]["code"] == "processing_backlog" and int(headers["Retry-After"]) >= 1, body
    for node_id in cluster.node_settings:
        assert await _backlog(cluster, node_id) >= MAX_BACKLOG
    before = await _images(cluster)
    status, body = await cluster.api("POST", "/v1/uploads", json={})
    assert status == 503 and body["error"]["code"] == "processing_backlog"
    assert await _images(cluster) == before  # a refused ticket leaves nothing behind

    gate.set()
    for image_id in uploaded:
        await cluster.wait_ready(image_id, timeout_s=30)

    async def issued_again() -> bool:
        status, body = await cluster.api("POST", "/v1/uploads", json={})
        return bool(status == 201)

    await cluster.wait_for(issued_again, "tickets issued again once processing caught up", timeout_s=10)

    async def drained() -> bool:
        return all([await _backlog(cluster, node_id) == 0 for node_id in cluster.node_settings])

    await cluster.wait_for(drained, "every node's backlog back to 0", timeout_s=10)
