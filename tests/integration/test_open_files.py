"""The node's open-file cache in a real cluster (storage_node.objects.openfiles): a second read of a file is a hit
that answers HEAD, Range and If-None-Match as a miss does, and a hit never outlives the file's fate: after a delete
the image is 404 as soon as the node hears of it, an evicted variant is rebuilt, and a damaged original gets a 307
to a good holder."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from storage_node import keys as node_keys
from storage_node.objects.store import ORIGINAL, Store
from tests.cluster import REGION_IPS, TestCluster, make_jpeg

NODE = "us-east-1"
CLIENT = REGION_IPS["us-east"][1]


def store_of(cluster: TestCluster) -> Store:
    return cluster.apps[NODE][node_keys.STORE]


def cached(cluster: TestCluster, image_id: str, name: str) -> bool:
    held = store_of(cluster).open_files.get((image_id, name))
    if held is None:
        return False
    held.release()
    return True


def fixed(headers: Any) -> dict[str, str]:
    """The headers that do not change from one response to the next (aiohttp's path names itself in Server; a hit
    answered by the fast lane, ``storage_node.lane``, does not)."""
    return {k.lower(): v for k, v in headers.items() if k.lower() not in ("date", "x-request-id", "server")}


async def fetch(cluster: TestCluster, url: str, method: str = "GET", **headers: str) -> tuple[int, bytes, Any]:
    assert cluster.session is not None
    async with cluster.session.request(method, url, headers=headers, allow_redirects=False) as resp:
        return resp.status, await resp.read(), resp.headers


async def test_hits_answer_like_misses_and_never_outlive_the_file(cluster: TestCluster) -> None:
    ups = [await cluster.upload(make_jpeg(seed=80 + i), client_ip=CLIENT) for i in range(2)]
    for up in ups:
        await cluster.wait_ready(up["image_id"])
        await cluster.wait_replicated(up["image_id"])
    image_id, other = ups[0]["image_id"], ups[1]["image_id"]
    base = cluster.node_settings[NODE].node.base_url
    url = f"{base}/i/{image_id}/w300.jpg"

    status, body, headers = await fetch(cluster, url)  # a miss: built, opened, kept
    assert status == 200 and cached(cluster, image_id, "w300.jpg")
    builds = cluster.apps[NODE][node_keys.RENDERER].builds
    status, again, hit = await fetch(cluster, url)
    assert status == 200 and again == body and fixed(hit) == fixed(headers)  # the same headers, made once
    etag, size = headers["ETag"], len(body)
    status, head_body, head = await fetch(cluster, url, "HEAD")
    assert status == 200 and head_body == b"" and head["ETag"] == etag and int(head["Content-Length"]) == size
    status, part, h = await fetch(cluster, url, Range="bytes=10-19")
    assert status == 206 and part == body[10:20] and h["Content-Range"] == f"bytes 10-19/{size}"
    status, err, h = await fetch(cluster, url, Range=f"bytes={size}-")
    assert status == 416 and h["Content-Range"] == f"bytes */{size}" and b"range_not_satisfiable" in err
    status, empty, h = await fetch(cluster, url, **{"If-None-Match": etag})
    assert status == 304 and empty == b"" and h["ETag"] == etag
    assert cached(cluster, image_id, "w300.jpg") and cluster.apps[NODE][node_keys.RENDERER].builds == builds

    # Evicted by the tier manager: the entry goes with the file, and the next request builds the variant again.
    assert store_of(cluster).evict_variant(image_id, "w300.jpg", idle_s=0, now=time.time() + 3600) == size
    assert not cached(cluster, image_id, "w300.jpg")
    status, rebuilt, _ = await fetch(cluster, url)
    assert status == 200 and rebuilt == body and cluster.apps[NODE][node_keys.RENDERER].builds == builds + 1

    # A cached original damaged on disk (same size: only a hash tells): the next request is a 307, never a 200.
    status, found = await cluster.api(
        "GET", f"/v1/images/{image_id}/url", params={"variant": "original", "client_ip": CLIENT}
    )
    assert status == 200
    signed = f"{base}/i/{image_id}/original?{found['url'].partition('?')[2]}"
    for _ in range(2):
        status, original, _ = await fetch(cluster, signed)
        assert status == 200 and hashlib.sha256(original).hexdigest() == ups[0]["sha256"]
    assert cached(cluster, image_id, ORIGINAL)
    path = store_of(cluster).original_path(image_id)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    status, _, h = await fetch(cluster, signed)
    assert status == 307 and not h["Location"].startswith(base)
    assert not cached(cluster, image_id, ORIGINAL) and not cached(cluster, image_id, "w300.jpg")
    assert (await fetch(cluster, url))[0] == 307  # its variants too: they may have been made from the bad bytes

    # Deleted: 404 as soon as the node hears of it (its gate forgets the image), however hot the file was; the
    # descriptor is closed when the files go.
    other_url = f"{base}/i/{other}/w300.jpg"
    for _ in range(2):
        assert (await fetch(cluster, other_url))[0] == 200
    assert cached(cluster, other, "w300.jpg")
    status, _ = await cluster.api("DELETE", f"/v1/images/{other}")
    assert status == 202

    async def gone() -> bool:
        return (await fetch(cluster, other_url))[0] == 404

    await cluster.wait_for(gone, "404 on the node", 2)
    await cluster.wait_for(lambda: not cached(cluster, other, "w300.jpg"), "the descriptor dropped", 10)
