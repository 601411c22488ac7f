"""HTTP semantics of the node read path (ETag/304, Range 206/416, multi-range, HEAD, Content-Type from the
detected format, nosniff, CSP, Cache-Control) and CORS for browser uploads, against a real cluster."""

from __future__ import annotations

import hashlib
from typing import Any

from tests.cluster import TestCluster, make_jpeg


async def fetch(cluster: TestCluster, url: str, method: str = "GET", **headers: str) -> tuple[int, bytes, Any]:
    assert cluster.session is not None
    async with cluster.session.request(method, url, headers=headers, allow_redirects=False) as resp:
        return resp.status, await resp.read(), resp.headers


async def test_conditional_range_head_and_headers(cluster: TestCluster) -> None:
    data = make_jpeg(seed=30)
    # The client's Content-Type is ignored: the stored type comes from the bytes.
    ticket = await cluster.request_upload(client_ip="3.0.1.10")
    status, _ = await cluster.put(ticket["upload_url"], data, headers={"Content-Type": "text/html"})
    assert status == 201
    await cluster.wait_ready(ticket["image_id"])
    url = f"{cluster.node_settings['us-east-1'].node.base_url}/i/{ticket['image_id']}/w300.jpg"

    status, body, headers = await fetch(cluster, url)
    assert status == 200 and body[:3] == b"\xff\xd8\xff"
    assert headers["Content-Type"] == "image/jpeg" and int(headers["Content-Length"]) == len(body)
    assert headers["X-Content-Type-Options"] == "nosniff"
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "sandbox" in csp
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert headers["Accept-Ranges"] == "bytes" and "Last-Modified" not in headers
    etag = headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")  # strong
    size = len(body)

    # HEAD: same headers, no body.
    status, head_body, head = await fetch(cluster, url, "HEAD")
    assert status == 200 and head_body == b"" and head["ETag"] == etag and int(head["Content-Length"]) == size

    # If-None-Match -> 304 (also in a list, also *), a different tag -> 200.
    for value in (etag, f'"nope", {etag}', "*"):
        status, body304, h304 = await fetch(cluster, url, **{"If-None-Match": value})
        assert status == 304 and body304 == b"" and h304["ETag"] == etag, value
    assert (await fetch(cluster, url, **{"If-None-Match": '"other"'}))[0] == 200

    # One range -> 206 with exactly those bytes.
    status, part, h = await fetch(cluster, url, Range="bytes=10-19")
    assert status == 206 and part == body[10:20] and h["Content-Range"] == f"bytes 10-19/{size}"
    status, tail, _ = await fetch(cluster, url, Range="bytes=-5")
    assert status == 206 and tail == body[-5:]
    status, rest, _ = await fetch(cluster, url, Range=f"bytes={size - 3}-")
    assert status == 206 and rest == body[-3:]
    # If-Range with our ETag honours the range; with another, the whole file comes back.
    assert (await fetch(cluster, url, Range="bytes=0-0", **{"If-Range": etag}))[0] == 206
    status, whole, _ = await fetch(cluster, url, Range="bytes=0-0", **{"If-Range": '"stale"'})
    assert status == 200 and whole == body

    # Unsatisfiable -> 416 with the docs/api.md error body and the size.
    status, err, h = await fetch(cluster, url, Range=f"bytes={size}-")
    assert status == 416 and h["Content-Range"] == f"bytes */{size}" and b"range_not_satisfiable" in err
    # Many ranges (amplification) or garbage -> the whole file once, never a multipart blow-up.
    many = "bytes=" + ",".join(f"{i}-{i}" for i in range(0, 400, 2))
    for value in (many, "bytes=0-1,0-1", "bytes=abc", "items=0-5", "bytes=5-2"):
        status, whole, h = await fetch(cluster, url, Range=value)
        assert status == 200 and len(whole) == size and "multipart" not in h["Content-Type"], value

    # The original needs a signed URL; its type is the detected one, and it is privately cacheable.
    status, found = await cluster.api("GET", f"/v1/images/{ticket['image_id']}/url?variant=original&client_ip=3.0.1.10")
    status, original, h = await fetch(cluster, found["url"])
    assert status == 200 and hashlib.sha256(original).hexdigest() == hashlib.sha256(data).hexdigest()
    assert h["Content-Type"] == "image/jpeg" and h["Cache-Control"].startswith("private")
    status, part, _ = await fetch(cluster, found["url"], Range="bytes=0-1")
    assert status == 206 and part == data[:2]


async def test_cors_for_browser_uploads(cluster: TestCluster, tmp_path: Any) -> None:
    # The default allows any origin (the signed URL is the credential): restart one node with a list.
    import dataclasses

    node_id = "us-east-1"
    settings = cluster.node_settings[node_id]
    cluster.node_settings[node_id] = dataclasses.replace(
        settings, node=dataclasses.replace(settings.node, cors_origin="https://app.example, https://b.example")
    )
    await cluster.stop_node(node_id)
    await cluster.start_node(node_id)
    await cluster.wait_for(lambda: cluster.healthy_count(3), "three healthy nodes")
    ticket = await cluster.request_upload(client_ip="3.0.1.10")
    assert ticket["node_id"] == node_id
    url = ticket["upload_url"]

    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "content-type",
    }
    status, _, h = await fetch(cluster, url, "OPTIONS", **preflight)
    assert status == 204 and h["Access-Control-Allow-Origin"] == "https://app.example"
    assert h["Access-Control-Allow-Methods"] == "PUT" and "content-type" in h["Access-Control-Allow-Headers"].lower()
    assert "Origin" in h["Vary"] and int(h["Access-Control-Max-Age"]) > 0
    for bad in (
        {**preflight, "Origin": "https://evil.example"},
        {**preflight, "Access-Control-Request-Method": "DELETE"},
        {**preflight, "Access-Control-Request-Headers": "x-admin"},
    ):
        status, body, h = await fetch(cluster, url, "OPTIONS", **bad)
        assert status == 403 and b"cors_forbidden" in body, bad
        # A foreign origin never gets an Allow-Origin (an allowed one may read the refusal).
        assert h.get("Access-Control-Allow-Origin") in (None, "https://app.example"), bad
        if bad["Origin"] == "https://evil.example":
            assert "Access-Control-Allow-Origin" not in h

    # The PUT itself: allowed origin gets the CORS headers (on errors too), others are refused unread.
    status, body, h = await fetch(cluster, url.replace("sig=", "sig=0"), "PUT", Origin="https://app.example")
    assert status == 403 and h["Access-Control-Allow-Origin"] == "https://app.example"
    assert cluster.session is not None
    async with cluster.session.put(url, data=make_jpeg(seed=31), headers={"Origin": "https://evil.example"}) as resp:
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "cors_forbidden"
    assert cluster.files_under(node_id, "objects") == []
    async with cluster.session.put(url, data=make_jpeg(seed=31), headers={"Origin": "https://app.example"}) as resp:
        assert resp.status == 201 and resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
