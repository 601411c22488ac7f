"""/metrics on the nodes and the query service: the figures follow what happened, by Prometheus
conventions, with bounded labels (never an image id)."""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import TestCluster, make_jpeg


async def scrape(session: aiohttp.ClientSession, base_url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """name -> [(labels, value)] for every sample (histogram parts keep their _bucket/_sum/_count names)."""
    async with session.get(f"{base_url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def value(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for lab, v in metrics.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def node_url(cluster: TestCluster, node_id: str) -> str:
    return cluster.node_settings[node_id].node.base_url


async def test_node_and_query_metrics_follow_uploads_reads_and_replication(cluster: TestCluster) -> None:
    assert cluster.session is not None
    session = cluster.session
    image = await cluster.upload(make_jpeg(400, 300, seed=7))
    image_id, origin = image["image_id"], image["node_id"]
    await cluster.wait_replicated(image_id)
    await cluster.wait_ready(image_id)  # only `ready` images are served; replication can finish first
    variant_url = f"{node_url(cluster, origin)}/i/{image_id}/w300.jpg"
    sizes = []
    for _ in range(2):  # a miss (built), then a hit (from disk)
        async with session.get(variant_url) as resp:
            assert resp.status == 200
            sizes.append(len(await resp.read()))
    async with session.head(variant_url) as resp:
        assert resp.status == 200  # HEAD sends no body: not counted as bytes served
    status, _ = await cluster.put(image["upload_url"].replace("sig=", "sig=0"), b"x")  # tampered URL
    assert status == 403

    m = await scrape(session, node_url(cluster, origin))
    assert value(m, "minicdn_uploads_total", outcome="ok") == 1
    assert value(m, "minicdn_upload_bytes_total") == image["bytes"]
    assert value(m, "minicdn_http_requests_total", route="/upload/{image_id}", method="PUT", status="201") == 1
    assert value(m, "minicdn_http_rejections_total", code="bad_signature") == 1
    assert value(m, "minicdn_variant_cache_requests_total", result="miss") == 1
    assert value(m, "minicdn_variant_cache_requests_total", result="hit") == 2  # the GET and the HEAD
    assert value(m, "minicdn_variant_build_duration_seconds_count", fmt="jpg") == 1
    assert value(m, "minicdn_processing_total", outcome="ready") == 1
    assert value(m, "minicdn_processing_duration_seconds_count") == 1
    assert value(m, "minicdn_http_response_bytes_total", route="/i/{image_id}/{variant}") == sum(sizes)
    assert value(m, "minicdn_http_request_duration_seconds_count", route="/i/{image_id}/{variant}") == 3
    async with session.get(f"{node_url(cluster, origin)}/stats") as resp:
        stats = await resp.json()

    async def usage_exported() -> bool:
        fresh = await scrape(session, node_url(cluster, origin))
        return value(fresh, "minicdn_node_objects", node_id=origin) == 1

    await cluster.wait_for(usage_exported, "a heartbeat exporting the new object")
    m = await scrape(session, node_url(cluster, origin))
    assert value(m, "minicdn_node_capacity_bytes", node_id=origin, region=stats["region"]) == stats["capacity_bytes"]
    assert value(m, "minicdn_node_used_bytes", node_id=origin) >= image["bytes"]

    for node_id in cluster.node_settings:
        if node_id == origin:
            continue
        peer = await scrape(session, node_url(cluster, node_id))
        assert value(peer, "minicdn_replication_lag_seconds_count", node_id=node_id) == 1
        assert value(peer, "minicdn_replication_copies_total", node_id=node_id, outcome="copied") == 1
        assert value(peer, "minicdn_replication_lag_seconds_sum", node_id=node_id) > 0

    q = await scrape(session, cluster.query_url)
    assert value(q, "minicdn_upload_tickets_total") == 1
    assert value(q, "minicdn_http_requests_total", route="/v1/uploads", status="201") == 1
    assert len(q["minicdn_cluster_node_up"]) == 3 and value(q, "minicdn_cluster_node_up") == 3
    assert all(v < 5 for _lab, v in q["minicdn_cluster_node_heartbeat_age_seconds"])
    assert value(q, "minicdn_images_under_replicated") == 0
    assert value(q, "minicdn_provisioning_events_total", kind="new_set") == 0  # exported before it happens

    # Bounded labels: no image id anywhere in any label of any process.
    for scraped in (m, q):
        for samples in scraped.values():
            for labels, _v in samples:
                assert image_id not in " ".join(labels.values())


async def test_backlog_gauges_follow_a_node_outage(cluster: TestCluster) -> None:
    assert cluster.session is not None
    await cluster.stop_node("eu-west-1")
    await cluster.wait_for(lambda: cluster.healthy_count(2), "eu-west-1 seen down")
    image = await cluster.upload(make_jpeg(200, 150, seed=3))

    async def backlog(expected: float) -> bool:
        q = await scrape(cluster.session, cluster.query_url)  # type: ignore[arg-type]
        return (
            value(q, "minicdn_replication_pending_replicas", node_id="eu-west-1") == expected
            and value(q, "minicdn_images_under_replicated") == expected
        )

    await cluster.wait_for(lambda: backlog(1), "the pending row to show")
    q: Any = await scrape(cluster.session, cluster.query_url)
    assert value(q, "minicdn_cluster_node_up", node_id="eu-west-1") == 0
    assert value(q, "minicdn_replication_oldest_pending_seconds") > 0
    await cluster.start_node("eu-west-1")
    await cluster.wait_replicated(image["image_id"])
    await cluster.wait_for(lambda: backlog(0), "the backlog to drain")


async def test_provisioning_events_are_counted_from_postgres(cluster: TestCluster) -> None:
    """The counter is read from the events table, so every query-service instance shows every action."""
    from common.db import control as db_control
    from common.db.pool import open_pool

    assert cluster.session is not None
    async with open_pool(cluster.settings().database) as pool:
        await db_control.record_event(pool, "node_state", "test", node_id="eu-west-1", outcome="state readonly")

    async def counted() -> bool:
        q = await scrape(cluster.session, cluster.query_url)  # type: ignore[arg-type]
        return (
            value(q, "minicdn_provisioning_events_total", kind="node_state") == 1
            and value(q, "minicdn_provisioning_events_total", kind="new_set") == 0
        )

    await cluster.wait_for(counted, "the event in the query service's /metrics")
