"""Nearest-replica URLs: each region's clients get their region's node; stale heartbeats fail over."""

from __future__ import annotations

import pytest

from tests.cluster import REGION_IPS, TestCluster, make_jpeg


@pytest.fixture
async def stored(cluster: TestCluster) -> str:
    up = await cluster.upload(make_jpeg(1600, 1200, seed=11))
    await cluster.wait_replicated(up["image_id"])
    await cluster.wait_ready(up["image_id"])
    return str(up["image_id"])


@pytest.mark.parametrize("region", sorted(REGION_IPS))
async def test_client_in_each_region_gets_that_regions_node(cluster: TestCluster, stored: str, region: str) -> None:
    status, body = await cluster.api(
        "GET", f"/v1/images/{stored}/url", params={"client_ip": REGION_IPS[region][1], "w": 500}
    )
    assert status == 200, body
    assert body["region"] == region and body["node_id"] == f"{region}-1"
    assert body["distance_km"] < 1
    assert body["variant"] == "w600.auto"  # no image types in Accept: the node negotiates
    assert body["url"].endswith(f"/i/{stored}/w600.auto")
    assert [a["region"] for a in body["alternatives"]] != [] and len(body["alternatives"]) == 2
    distances = [a["distance_km"] for a in body["alternatives"]]
    assert distances == sorted(distances)


async def test_stale_heartbeat_sends_clients_to_next_nearest_then_503(cluster: TestCluster, stored: str) -> None:
    eu = REGION_IPS["eu-west"][1]
    status, body = await cluster.api("GET", f"/v1/images/{stored}/url", params={"client_ip": eu})
    next_nearest = body["alternatives"][0]["node_id"]
    assert next_nearest == "us-east-1"  # Dublin -> Virginia is nearer than Dublin -> Singapore
    await cluster.stop_node("eu-west-1")
    await cluster.wait_for(lambda: cluster.healthy_count(2), "eu-west-1 marked unhealthy", 10)
    status, body = await cluster.api("GET", f"/v1/images/{stored}/url", params={"client_ip": eu})
    assert status == 200 and body["node_id"] == next_nearest
    assert "eu-west-1" not in [a["node_id"] for a in body["alternatives"]]
    await cluster.stop_node("us-east-1")
    await cluster.stop_node("ap-southeast-1")
    await cluster.wait_for(lambda: cluster.healthy_count(0), "all nodes unhealthy", 10)
    status, body = await cluster.api("GET", f"/v1/images/{stored}/url", params={"client_ip": eu})
    assert status == 503 and body["error"]["code"] == "no_replica"


async def test_unknown_client_falls_back_to_default_location(cluster: TestCluster, stored: str) -> None:
    status, body = await cluster.api("GET", f"/v1/images/{stored}/url", params={"client_ip": "8.8.8.8"})
    assert status == 200 and body["region"] == "us-east"  # the default location is us-east


async def test_url_serves_the_variant_and_redirect(cluster: TestCluster, stored: str) -> None:
    assert cluster.session is not None
    _, body = await cluster.api("GET", f"/v1/images/{stored}/url", params={"w": 250, "dpr": 2, "fmt": "webp"})
    assert body["variant"] == "w600.webp"
    async with cluster.session.get(body["url"]) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "image/webp"
        assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        data = await resp.read()
        etag = resp.headers["ETag"]
    import pyvips

    assert pyvips.Image.new_from_buffer(data, "").width == 600
    # The same variant has the same strong ETag on every replica.
    for alt in body["alternatives"]:
        async with cluster.session.head(alt["url"]) as resp:
            assert resp.status == 200 and resp.headers["ETag"] == etag
    async with cluster.session.get(body["url"], headers={"If-None-Match": etag}) as resp:
        assert resp.status == 304
    async with cluster.session.get(
        f"{cluster.query_url}/img/{stored}", params={"w": 100}, allow_redirects=False
    ) as resp:
        assert resp.status == 302 and resp.headers["Location"].endswith("/w150.auto")


async def test_url_errors(cluster: TestCluster) -> None:
    status, body = await cluster.api("GET", "/v1/images/../etc/url")
    assert status == 404
    status, body = await cluster.api("GET", "/v1/images/aaaaaaaaaaaaaaaaaaaaaa/url")
    assert status == 404 and body["error"]["code"] == "not_found"
    ticket = await cluster.request_upload()
    status, body = await cluster.api("GET", f"/v1/images/{ticket['image_id']}/url")
    assert status == 409 and body["error"]["code"] == "not_ready"
    status, body = await cluster.api("GET", f"/v1/images/{ticket['image_id']}/url", params={"fmt": "gif"})
    assert status == 400 and body["error"]["code"] == "invalid_request"
