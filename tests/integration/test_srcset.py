"""GET /v1/images/{id}/srcset on a real cluster: the widths listed (each no wider than the image, each
descriptor the real width of the file its URL serves), URLs on the client's nearest healthy node, signed
URLs for private images, the configured default widths, and the refusals."""

from __future__ import annotations

from typing import Any

import pytest
import pyvips

from tests.cluster import REGION_IPS, TestCluster, make_jpeg


@pytest.fixture
async def wide(cluster: TestCluster) -> str:
    """A public 1600x1200 image, ready and on every node."""
    up = await cluster.upload(make_jpeg(1600, 1200, seed=21))
    await cluster.wait_ready(up["image_id"])
    await cluster.wait_replicated(up["image_id"])
    return str(up["image_id"])


def entries(srcset: str) -> list[tuple[str, int]]:
    out = []
    for item in srcset.split(", "):
        url, descriptor = item.rsplit(" ", 1)
        assert descriptor.endswith("w")
        out.append((url, int(descriptor[:-1])))
    return out


async def fetch_width(cluster: TestCluster, url: str) -> tuple[int, str]:
    """The pixel width and content type of what a srcset URL serves."""
    assert cluster.session is not None
    async with cluster.session.get(url) as resp:
        assert resp.status == 200, (url, resp.status, await resp.text())
        data = await resp.read()
        return pyvips.Image.new_from_buffer(data, "").width, resp.headers["Content-Type"]


async def test_default_widths_nearest_node_and_real_descriptors(cluster: TestCluster, wide: str) -> None:
    for region, (_net, ip) in REGION_IPS.items():
        status, body = await cluster.api("GET", f"/v1/images/{wide}/srcset", params={"client_ip": ip})
        assert status == 200, body
        assert body["region"] == region and body["node_id"] == f"{region}-1"
        listed = entries(body["srcset"])
        # limits.widths is 150,300,600,1200,2400: every one not wider than the 1600-px image.
        assert [w for _u, w in listed] == body["widths"] == [150, 300, 600, 1200]
        node = next(n for n in cluster.node_settings.values() if n.node.node_id == body["node_id"])
        assert all(u.startswith(f"{node.node.base_url}/i/{wide}/w") for u, _w in listed)
        assert body["src"] == listed[-1][0] and body["expires_at"] is None
        assert "sig=" not in body["srcset"]
    for url, width in listed:  # each descriptor is the width of the file served
        assert (await fetch_width(cluster, url))[0] == width


async def test_asked_widths_snap_to_the_variants_nodes_make(cluster: TestCluster, wide: str) -> None:
    status, body = await cluster.api(
        "GET", f"/v1/images/{wide}/srcset", params={"widths": "1280,320,640,2000", "fmt": "webp"}
    )
    assert status == 200, body
    # 2000 is wider than the image: left out. 320 -> w600, 640 -> w1200, 1280 -> w2400, which a 1600-px
    # image serves at 1600 px (nodes never upscale): the descriptor says so.
    assert body["widths"] == [600, 1200, 1600]
    assert body["variants"] == ["w600.webp", "w1200.webp", "w2400.webp"]
    listed = entries(body["srcset"])
    assert body["src"] == listed[-1][0]
    for url, width in listed:
        assert await fetch_width(cluster, url) == (width, "image/webp")
    # Widths that all land on one variant give one entry; an image narrower than every width gives itself.
    status, body = await cluster.api("GET", f"/v1/images/{wide}/srcset", params={"widths": "400,500,600"})
    assert status == 200 and body["widths"] == [600] and body["variants"] == ["w600.auto"]
    status, body = await cluster.api("GET", f"/v1/images/{wide}/srcset", params={"widths": "2000,3000"})
    assert status == 200 and body["widths"] == [1600] and len(entries(body["srcset"])) == 1


async def test_private_image_gets_signed_urls_for_its_app_only(cluster: TestCluster) -> None:
    up = await cluster.upload(make_jpeg(700, 500, seed=22), visibility="private")
    image_id = up["image_id"]
    await cluster.wait_ready(image_id)
    await cluster.wait_replicated(image_id)
    status, body = await cluster.api("GET", f"/v1/images/{image_id}/srcset", params={"widths": "300,600,900"})
    assert status == 200, body
    assert body["widths"] == [300, 600] and body["expires_at"] is not None
    listed = entries(body["srcset"])
    assert all("sig=" in u and "exp=" in u and "kid=" in u for u, _w in listed)
    for url, width in listed:
        assert (await fetch_width(cluster, url))[0] == width
    assert cluster.session is not None
    # Without its signature the node refuses; without a key (or with another app's) the image is not found.
    async with cluster.session.get(listed[0][0].split("?")[0]) as resp:
        assert resp.status == 403
    async with cluster.session.get(f"{cluster.query_url}/v1/images/{image_id}/srcset") as resp:
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    status, other = await cluster.api("POST", "/v1/keys", json={"name": "other", "scopes": ["app"], "rate_per_s": 0})
    assert status == 201, other
    status, body = await cluster.api(
        "GET", f"/v1/images/{image_id}/srcset", headers={"Authorization": f"Bearer {other['api_key']}"}
    )
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_configured_default_widths(cluster: TestCluster, wide: str) -> None:
    url = await cluster.start_query("srcset-query", srcset_widths=[300, 1200, 4000])
    session = cluster.session
    assert session is not None

    async def answer() -> dict[str, Any]:
        async with session.get(f"{url}/v1/images/{wide}/srcset", headers=cluster.auth) as resp:
            return {"status": resp.status, **await resp.json()}

    async def healthy() -> bool:
        return bool((await answer())["status"] == 200)

    await cluster.wait_for(healthy, "the new instance sees healthy nodes", 10)
    body = await answer()
    assert body["widths"] == [300, 1200]  # 4000 is wider than the image


async def test_srcset_refusals(cluster: TestCluster, wide: str) -> None:
    for params, name in (
        ({"widths": "abc"}, "widths"),
        ({"widths": "0,300"}, "widths"),
        ({"widths": "20000"}, "widths"),
        ({"widths": ",".join(str(100 + i) for i in range(21))}, "widths"),
        ({"fmt": "gif"}, "fmt"),
        ({"fit": "stretch"}, "fit"),
        ({"client_ip": "not-an-ip"}, "client_ip"),
    ):
        status, body = await cluster.api("GET", f"/v1/images/{wide}/srcset", params=params)
        assert status == 400 and body["error"]["code"] == "invalid_request", (params, body)
        assert name in body["error"]["message"], (params, body)
    status, body = await cluster.api("GET", "/v1/images/aaaaaaaaaaaaaaaaaaaaaa/srcset")
    assert status == 404 and body["error"]["code"] == "not_found"
    ticket = await cluster.request_upload()
    status, body = await cluster.api("GET", f"/v1/images/{ticket['image_id']}/srcset")
    assert status == 409 and body["error"]["code"] == "not_ready"
