"""URL lookups answered from memory, kept current by events: a replica that becomes `ok` is handed out at once,
and no lookup of a known image or key asks Postgres (the query service's pool hands out no connection)."""

from __future__ import annotations

from aiohttp import web

from query_service import keys
from tests.cluster import MakeCluster, TestCluster, make_jpeg

STOPPED = "ap-southeast-1"


async def _quiet_query_service(cluster: TestCluster) -> tuple[str, web.Application]:
    """A second query-service process (not the primary: no sweeps) whose only periodic Postgres reads are made
    rare, so every connection its pool hands out during the test is a lookup's."""
    url = await cluster.start_query("quiet", worker=1, node_refresh_s=600, stats_interval_s=600, reconcile_s=600)
    return url, cluster.apps["quiet"]


async def test_a_new_replica_is_handed_out_without_a_postgres_query_per_lookup(make_cluster: MakeCluster) -> None:
    cluster = await make_cluster()
    await cluster.stop_node(STOPPED)  # its replica stays `pending` until it is back
    up = await cluster.upload(make_jpeg(seed=31), client_ip="3.0.1.10")
    image_id = up["image_id"]
    await cluster.wait_ready(image_id)

    async def two_copies() -> bool:
        return sorted(s for s in (await cluster.replicas(image_id)).values()) == ["ok", "ok", "pending"]

    await cluster.wait_for(two_copies, "two verified copies")
    url, app = await _quiet_query_service(cluster)
    pool, locations = app[keys.POOL], app[keys.LOCATIONS]
    assert cluster.session is not None
    # Its start-up reads (the dashboard's figures) done, the pool is left to the lookups.
    await cluster.wait_for(lambda: app[keys.CLUSTER_STATS].capacity is not None, "the first dashboard figures")

    async def holders() -> set[str]:
        async with cluster.session.get(f"{url}/v1/images/{image_id}/url?w=300", headers=cluster.auth) as resp:  # type: ignore[union-attr]
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        return {body["node_id"], *(alt["node_id"] for alt in body["alternatives"])}

    assert await holders() == {"us-east-1", "eu-west-1"}  # first sight of the key and the image: read once
    requests_before = pool.get_stats()["requests_num"]
    loads_before = (locations.loads, app[keys.AUTH].keys.loads)
    lookups = 0
    for _ in range(20):
        assert await holders() == {"us-east-1", "eu-west-1"}
        lookups += 1

    await cluster.start_node(STOPPED)  # its sweep copies the image, records it `ok` and says so on NATS

    async def three_holders() -> bool:
        nonlocal lookups
        lookups += 1
        return await holders() == {"us-east-1", "eu-west-1", STOPPED}

    await cluster.wait_for(three_holders, "the new replica handed out", 20)
    assert (await cluster.replicas(image_id))[STOPPED] == "ok"
    assert lookups > 20
    assert pool.get_stats()["requests_num"] == requests_before, "a lookup of a known image asked Postgres"
    assert (locations.loads, app[keys.AUTH].keys.loads) == loads_before
