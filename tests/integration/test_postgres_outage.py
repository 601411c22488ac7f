"""Postgres stopped for real under a small lookup load: lookups of known images keep answering from memory (with
and without an API key, the JSON answer, the redirect and the srcset), nodes keep serving what they hold, and
everything that needs the database fails fast with `503 database_unavailable` and `Retry-After`, never a 500
nor a hang. Postgres started again, tickets work again within a heartbeat.

The cluster's Postgres is this test's own (the session's is shared by every test and must never stop).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from minicdn.embedded import EmbeddedNats, EmbeddedPostgres
from tests.cluster import REGION_IPS, TestCluster, make_jpeg

FAST_S = 1.0  # what "fails fast" means: database.acquire_timeout_s (0.5 s) plus the request's own time
US = REGION_IPS["us-east"][1]


@pytest.fixture
async def own_pg(tmp_path: Path) -> AsyncIterator[EmbeddedPostgres]:
    server = await asyncio.to_thread(EmbeddedPostgres(tmp_path / "pg" / "data").start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def _timed(
    cluster: TestCluster, method: str, path: str, *, key: bool = True, **kw: Any
) -> tuple[int, Any, dict[str, str], float]:
    """One request (with the cluster's key unless ``key`` is False): status, JSON body, headers, seconds taken."""
    assert cluster.session is not None
    headers = {**(cluster.auth if key else {}), **kw.pop("headers", {})}
    started = time.monotonic()
    async with cluster.session.request(
        method, f"{cluster.query_url}{path}", headers=headers, allow_redirects=False, **kw
    ) as resp:
        body = await resp.json(content_type=None) if resp.content_type == "application/json" else None
        return resp.status, body, dict(resp.headers), time.monotonic() - started


def _refused_fast(answer: tuple[int, Any, dict[str, str], float]) -> None:
    status, body, headers, took_s = answer
    assert status == 503, (status, body)
    assert body["error"]["code"] == "database_unavailable"
    assert int(headers["Retry-After"]) >= 1
    assert took_s < FAST_S, f"refused after {took_s:.2f}s"


async def _reconcile_age_s(cluster: TestCluster) -> float:
    assert cluster.session is not None
    async with cluster.session.get(f"{cluster.query_url}/metrics") as resp:
        text = await resp.text()
    line = next(x for x in text.splitlines() if x.startswith("minicdn_query_reconcile_age_seconds "))
    return float(line.split()[1])


async def test_lookups_answer_from_memory_while_postgres_is_down_and_the_rest_fails_fast(
    tmp_path: Path, own_pg: EmbeddedPostgres, nats_server: EmbeddedNats, geoip_db: str
) -> None:
    database_url = await asyncio.to_thread(own_pg.create_database, "outage")
    # A reconcile every 0.3 s, so the outage shows in its age within the test's seconds.
    cluster = TestCluster(
        tmp_path / "cluster", database_url, nats_server.url, geoip_db, extra={"query": {"reconcile_s": 0.3}}
    )
    await cluster.start()
    try:
        await _outage(cluster, own_pg)
    finally:
        await cluster.stop()


async def _outage(cluster: TestCluster, pg: EmbeddedPostgres) -> None:
    assert cluster.session is not None
    public = await cluster.upload(make_jpeg(seed=41), client_ip=US)
    private = await cluster.upload(make_jpeg(seed=42), client_ip=US, visibility="private")
    ids = [public["image_id"], private["image_id"]]
    for image_id in ids:
        await cluster.wait_ready(image_id)
        await cluster.wait_replicated(image_id)
    unused_ticket = await cluster.request_upload(client_ip=US)  # its PUT comes during the outage

    # The lookups under test (path, with the key?), each answered once before the outage: the first sights of
    # the key, the images and their app.
    lookups = [
        (f"/v1/images/{ids[0]}/url?w=300", False),
        (f"/v1/images/{ids[0]}/url?w=300", True),
        (f"/v1/images/{ids[1]}/url?w=600", True),  # private: the key decides, from memory
        (f"/img/{ids[0]}?w=300", False),
        (f"/v1/images/{ids[0]}/srcset", True),
    ]
    variant_url = ""
    for path, key in lookups:
        status, body, _, _ = await _timed(cluster, "GET", path, key=key)
        assert status in (200, 302), (path, status, body)
        variant_url = variant_url or body["url"]
    async with cluster.session.get(variant_url) as resp:  # the node builds the variant now, not in the outage
        assert resp.status == 200
    # That node restarts before the outage: its new process serves what it held from the ready markers on its
    # disk, once they are checked against Postgres (storage_node.ready_marks), without asking Postgres.
    node_id = next(n for n, st in cluster.node_settings.items() if variant_url.startswith(st.node.base_url))
    await cluster.stop_node(node_id)
    await cluster.start_node(node_id)  # (its start removes the earlier run's stamp)
    await cluster.wait_for(cluster.store(node_id).ready_marks_checked, "the ready markers checked", 10)

    await asyncio.to_thread(pg.stop)
    outage_started = time.monotonic()
    seen: Counter[int] = Counter()
    stop = asyncio.Event()

    async def lookup_load() -> None:
        while not stop.is_set():
            for path, key in lookups:
                status, body, _, _ = await _timed(cluster, "GET", path, key=key)
                seen[status] += 1
                assert status in (200, 302), (path, status, body)

    load = [asyncio.create_task(lookup_load()) for _ in range(3)]
    try:
        # Everything that needs the database: refused at once with the documented error.
        _refused_fast(await _timed(cluster, "POST", "/v1/uploads", json={"filename": "a.jpg"}))
        _refused_fast(await _timed(cluster, "GET", "/v1/images?limit=5"))
        _refused_fast(await _timed(cluster, "GET", f"/v1/images/{ids[0]}"))
        _refused_fast(await _timed(cluster, "DELETE", f"/v1/images/{ids[0]}"))
        _refused_fast(await _timed(cluster, "GET", "/v1/keys"))
        # A key never seen needs Postgres to be checked: refused the same way, not taken for a wrong key.
        unknown_key = {"Authorization": "Bearer mk_00000000_unknown"}
        _refused_fast(await _timed(cluster, "GET", f"/v1/images/{ids[0]}/url", key=False, headers=unknown_key))
        # A node's upload needs Postgres to commit: refused fast, and it leaves nothing behind.
        started = time.monotonic()
        async with cluster.session.put(unused_ticket["upload_url"], data=make_jpeg(seed=43)) as resp:
            body = await resp.json(content_type=None)
            _refused_fast((resp.status, body, dict(resp.headers), time.monotonic() - started))
        origin = unused_ticket["node_id"]
        assert cluster.files_under(origin, "tmp") == []
        assert not any(unused_ticket["image_id"] in str(p) for p in cluster.files_under(origin))
        # The node serves what it holds without asking Postgres.
        async with cluster.session.get(variant_url) as resp:
            assert resp.status == 200
        # How old the memory is shows in the metrics, and grows while the reconcile cannot run.
        await cluster.wait_for(lambda: time.monotonic() - outage_started > 1.0, "a second of outage", 5)
        assert await _reconcile_age_s(cluster) > 0.7
    finally:
        stop.set()
        await asyncio.gather(*load)
    assert set(seen) <= {200, 302} and sum(seen.values()) > 3 * len(lookups), seen

    await asyncio.to_thread(pg.start)

    async def ticket_works() -> bool:
        status, body, _, _ = await _timed(cluster, "POST", "/v1/uploads", json={"filename": "b.jpg"})
        assert status in (201, 503), (status, body)  # never a 500 on the way back
        return status == 201

    # Within a heartbeat's timeout (health.heartbeat_timeout_s is 1.5 s here): no reconnect backoff is left over
    # from the outage, whatever it was.
    await cluster.wait_for(ticket_works, "tickets again", 1.5)

    async def reconciled() -> bool:
        return await _reconcile_age_s(cluster) < 0.7

    await cluster.wait_for(reconciled, "a reconcile after the outage", 3)
