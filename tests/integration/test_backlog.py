"""Processing keeps up or pushes back. With processing held up (every node's sandbox jobs wait on a gate), uploads
are still acknowledged (`201`: durable, not yet processed); each node reports its backlog (heartbeat, /metrics);
once every node is at `pipeline.max_backlog`, a ticket gets `503 processing_backlog` with `Retry-After` and
nothing is created. Let go, processing drains the queue and tickets are issued again."""

from __future__ import annotations

import asyncio
import io
from typing import Any, TypedDict

import pytest
from PIL import Image

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


async def _not_ready(cluster: TestCluster, image_ids: list[str]) -> int:
    row = await fetch_one(
        cluster.apps["query"][query_keys.POOL],
        CountRow,
        "SELECT count(*) AS n FROM images WHERE image_id = ANY(%s) AND status <> 'ready'",
        (image_ids,),
    )
    assert row is not None
    return row["n"]


async def test_a_probe_in_the_sandbox_never_waits_behind_the_processing_backlog(make_cluster: MakeCluster) -> None:
    """A BMP is probed in the node's sandbox before its 201; a backlog of long processing jobs on that sandbox
    (one worker) must not hold that acknowledgement until the backlog has drained."""
    backlog = 10
    # Made before the cluster starts, whose processes share this event loop.
    bodies = [make_jpeg(2500, 2500, seed=i) for i in range(backlog)]  # a long job each: a full decode of 6 MP
    cluster = await make_cluster(pipeline={"workers": 1})
    ip = REGION_IPS["us-east"][1]
    tickets = [await cluster.request_upload(client_ip=ip) for _ in range(backlog)]
    puts = (cluster.put(t["upload_url"], io.BytesIO(b)) for t, b in zip(tickets, bodies, strict=True))
    answers = await asyncio.gather(*puts)
    assert all(status == 201 for status, _ in answers), answers
    ids = [t["image_id"] for t in tickets]
    bmp = io.BytesIO()
    Image.effect_noise((300, 200), 40).convert("RGB").save(bmp, "BMP")
    ticket = await cluster.request_upload(client_ip=ip)
    assert ticket["upload_url"].startswith(tickets[0]["upload_url"].split("/upload/")[0])  # the same node
    status, body = await cluster.put(ticket["upload_url"], bmp.getvalue())
    waiting = await _not_ready(cluster, ids)
    assert status == 201, body
    # Before, the probe queued behind every processing job (one FIFO queue): none was left by its 201.
    assert waiting >= backlog // 2, (
        f"the BMP was acknowledged only once {backlog - waiting} of {backlog} were processed"
    )
    for image_id in [*ids, ticket["image_id"]]:
        await cluster.wait_ready(image_id, timeout_s=60)
