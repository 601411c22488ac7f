"""nginx in front of a node (`minicdn nginx-config`, `node.published_tree`): real nginx, real node.

nginx sends a ready, public variant from the published tree with the node's own bytes and headers (ETag included,
304 too), and keeps sending it with the node stopped (so it came from disk); everything else reaches the node, which
answers as it does without nginx: a deleted image (404 as soon as the delete is answered), a private image, a signed
URL, an image not `ready` (quarantined), a hotlink-protected app's image, an original, and `auto` (Vary: Accept).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from common.db.api_keys import create_key
from common.db.pool import open_pool
from common.procs import free_port
from minicdn.bench.nginx import nginx_binary
from minicdn.nginx_config import render
from query_service.handlers_images import signed_query
from tests.cluster import MakeCluster, TestCluster, make_jpeg

NODE = "us-east-1"
CLIENT_IP = "3.0.1.10"  # in us-east: uploads land on NODE
SAME = ("Content-Type", "Cache-Control", "Content-Security-Policy", "X-Content-Type-Options", "ETag")

Answer = tuple[int, CIMultiDict[str], bytes]  # header names are not case-sensitive


@contextlib.contextmanager
def _nginx(cluster: TestCluster, root: Path) -> Iterator[str]:
    exe = nginx_binary()
    assert exe is not None, "nginx is not installed (Debian's nginx-light: .ci/run installs it)"
    port = free_port()
    run = root / "run"
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (run / "tmp" / sub).mkdir(parents=True)
    conf = run / "nginx.conf"
    conf.write_text(render(cluster.node_settings[NODE], listen=f"127.0.0.1:{port}", workers="1", run_dir=run))
    with (run / "stderr.log").open("wb") as out:
        proc = subprocess.Popen(
            [exe, "-p", str(run), "-c", str(conf), "-e", str(run / "error.log"), "-g", "daemon off;"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


async def _get(session: aiohttp.ClientSession, url: str, **headers: str) -> Answer:
    async with session.get(url, headers=headers, allow_redirects=False) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


async def _wait_up(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 15
    while True:
        with contextlib.suppress(aiohttp.ClientError):
            if (await _get(session, url))[0] == 200:
                return
        assert time.monotonic() < deadline, "nginx did not come up"
        await asyncio.sleep(0.1)


@pytest.fixture
async def front(make_cluster: MakeCluster, tmp_path: Path) -> AsyncIterator[tuple[TestCluster, str, Path]]:
    flags = tmp_path / "flags"
    flags.mkdir()
    hook = tmp_path / "moderate.sh"  # quarantines the images whose id has a file in flags/
    hook.write_text(f'#!/bin/sh\n[ -e "{flags}/$MINICDN_IMAGE_ID" ] && {{ echo flagged; exit 1; }}\nexit 0\n')
    hook.chmod(0o755)
    cluster = await make_cluster(
        node={"published_tree": True}, http={"hotlink_refresh_s": 0.2}, moderation={"command": str(hook)}
    )
    with _nginx(cluster, tmp_path / "nginx") as url:
        assert cluster.session is not None
        await _wait_up(cluster.session, f"{url}/healthz")  # the node's, through nginx
        yield cluster, url, flags


def _node(cluster: TestCluster) -> str:
    return cluster.node_settings[NODE].node.base_url


def _linked(cluster: TestCluster, image_id: str) -> list[str]:
    return cluster.store(NODE).published.linked(image_id)


async def _ready(cluster: TestCluster, seed: int, **fields: object) -> str:
    up = await cluster.upload(make_jpeg(seed=seed), client_ip=CLIENT_IP, **fields)
    assert up["upload_url"].startswith(_node(cluster)), "uploaded to the node nginx is in front of"
    await cluster.wait_ready(up["image_id"])
    return str(up["image_id"])


async def test_a_published_variant_is_sent_by_nginx_as_the_node_sends_it(
    front: tuple[TestCluster, str, Path],
) -> None:
    cluster, nginx, _flags = front
    assert cluster.session is not None
    s = cluster.session
    image_id = await _ready(cluster, 71)
    path = f"/i/{image_id}/w300.jpg"

    first = await _get(s, nginx + path)  # a miss: the node answers and publishes it
    assert first[0] == 200 and _linked(cluster, image_id) == ["w300.jpg"]
    direct = await _get(s, _node(cluster) + path)
    assert direct[0] == 200 and direct[2] == first[2]
    await cluster.stop_node(NODE)  # from now on only the disk can answer
    try:
        status, headers, body = await _get(s, nginx + path)
        assert status == 200 and body == direct[2]
        assert {h: headers.get(h) for h in SAME} == {h: direct[1].get(h) for h in SAME}
        assert headers["Content-Type"] == "image/jpeg" and "immutable" in headers["Cache-Control"]
        assert "Last-Modified" not in headers and "Last-Modified" not in direct[1]
        status, headers, body = await _get(s, nginx + path, **{"If-None-Match": direct[1]["ETag"]})
        assert status == 304 and body == b"" and headers["ETag"] == direct[1]["ETag"]
        status, headers, body = await _get(s, nginx + path, Range="bytes=0-9")
        assert status == 206 and body == direct[2][:10]
        assert (await _get(s, nginx + f"/i/{image_id}/w600.jpg"))[0] == 502  # not published: only the node has it
    finally:
        await cluster.start_node(NODE)
    await cluster.wait_for(lambda: cluster.healthy_count(3), "the node back")
    status, headers, _ = await _get(s, _node(cluster) + path, **{"If-None-Match": direct[1]["ETag"]})
    assert status == 304  # the node revalidates the same ETag

    # A delete: 404 through nginx as soon as it is answered, and the tree holds nothing of it.
    status, _ = await cluster.api("DELETE", f"/v1/images/{image_id}")
    assert status == 202
    assert (await _get(s, nginx + path))[0] == 404
    assert _linked(cluster, image_id) == []


async def test_nginx_passes_to_the_node_what_anyone_may_not_be_sent(front: tuple[TestCluster, str, Path]) -> None:
    cluster, nginx, flags = front
    assert cluster.session is not None
    s = cluster.session

    async def same_as_node(path: str, **headers: str) -> Answer:
        got = await _get(s, nginx + path, **headers)
        direct = await _get(s, _node(cluster) + path, **headers)
        assert got[0] == direct[0] and got[2] == direct[2], path
        return got

    # A private image: refused unsigned, sent signed, never published.
    private = await _ready(cluster, 72, visibility="private")
    assert (await same_as_node(f"/i/{private}/w300.jpg"))[0] == 403
    status, found = await cluster.api("GET", f"/v1/images/{private}/url", params={"w": 300, "fmt": "jpg"})
    assert status == 200 and found["url"].startswith(_node(cluster))
    signed = found["url"].removeprefix(_node(cluster))
    assert (await same_as_node(signed))[0] == 200
    assert _linked(cluster, private) == []

    # A signed URL of a public image is the owner's grant: sent, not published (it may be a size no one else gets).
    public = await _ready(cluster, 73)
    query = signed_query(cluster.settings(), public, "w300.jpg", int(time.time()) + 600)
    assert (await same_as_node(f"/i/{public}/w300.jpg{query}"))[0] == 200
    status, found = await cluster.api("GET", f"/v1/images/{public}/url", params={"variant": "original"})
    assert status == 200 and "sig=" in found["url"]
    assert (await same_as_node(found["url"].removeprefix(_node(cluster))))[0] == 200
    assert (await same_as_node(f"/i/{public}/original"))[0] == 403  # an original needs a signature, as ever
    assert _linked(cluster, public) == []

    # `auto`: negotiated by the node from Accept, with Vary: Accept, never published.
    status, headers, _ = await same_as_node(f"/i/{public}/w300.auto", Accept="image/webp,*/*")
    assert status == 200 and headers["Content-Type"] == "image/webp" and headers["Vary"] == "Accept"
    status, headers, _ = await same_as_node(f"/i/{public}/w300.auto", Accept="image/jpeg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and headers["Vary"] == "Accept"
    assert _linked(cluster, public) == []

    # An image not `ready` (held by moderation): the node's answer, nothing published.
    ticket = await cluster.request_upload(client_ip=CLIENT_IP)
    held = ticket["image_id"]
    (flags / held).touch()
    assert (await cluster.put(ticket["upload_url"], make_jpeg(seed=77)))[0] == 201
    await cluster.wait_ready(held, status="quarantined")
    assert (await same_as_node(f"/i/{held}/w300.jpg"))[0] == 404
    assert _linked(cluster, held) == []

    # A hotlink-protected app's image: sent to the allowed site by the node, refused elsewhere, never published.
    async with open_pool(cluster.settings().database) as pool:
        _key, secret = await create_key(pool, "shop", ("app",), rate_per_s=0, referers=("shop.example",))
    await asyncio.sleep(0.5)  # the nodes reload the allowlists every 0.2 s
    async with s.post(
        f"{cluster.query_url}/v1/uploads",
        json={"client_ip": CLIENT_IP},
        headers={"Authorization": f"Bearer {secret}"},
    ) as resp:
        ticket = await resp.json()
    assert (await cluster.put(ticket["upload_url"], make_jpeg(seed=78)))[0] == 201
    guarded = ticket["image_id"]
    await cluster.wait_ready(guarded)
    path = f"/i/{guarded}/w300.jpg"
    assert (await same_as_node(path, Referer="https://shop.example/p/1"))[0] == 200
    assert (await same_as_node(path, Referer="https://elsewhere.example/"))[0] == 403
    assert _linked(cluster, guarded) == []

    # Uploads reach the node through nginx too.
    ticket = await cluster.request_upload(client_ip=CLIENT_IP)
    via = nginx + ticket["upload_url"].removeprefix(_node(cluster))
    status, body = await cluster.put(via, make_jpeg(seed=79))
    assert status == 201, body


async def test_an_app_that_gains_an_allowlist_is_served_by_the_node_only(front: tuple[TestCluster, str, Path]) -> None:
    cluster, nginx, _flags = front
    assert cluster.session is not None
    s = cluster.session
    image_id = await _ready(cluster, 74)
    path = f"/i/{image_id}/thumb.jpg"
    assert (await _get(s, nginx + path))[0] == 200 and _linked(cluster, image_id) == ["thumb.jpg"]
    # No API changes an app's allowlist today (a restricted app is made with its key): the row is changed here.
    async with open_pool(cluster.settings().database) as pool, pool.connection() as conn:
        await conn.execute(
            "UPDATE apps SET referers = ARRAY['shop.example']"
            " WHERE app_id = (SELECT app_id FROM images WHERE image_id = %s)",
            (image_id,),
        )
    await cluster.wait_for(lambda: _linked(cluster, image_id) == [], "the published tree cleared", 5)
    assert (await _get(s, nginx + path, Referer="https://elsewhere.example/"))[0] == 403  # the node's answer
    assert (await _get(s, nginx + path, Referer="https://shop.example/"))[0] == 200
    assert _linked(cluster, image_id) == []
