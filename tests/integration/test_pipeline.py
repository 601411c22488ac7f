"""The image pipeline end to end on a real three-region cluster: processing states and metadata, eager
thumbnails, every variant over HTTP with negotiation, hostile inputs, single-flight, dedupe, quarantine
and callbacks."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
import pyvips
from multidict import CIMultiDict

from common import callbacks
from query_service import keys as query_keys
from storage_node import keys as node_keys
from storage_node.objects.store import ORIGINAL
from tests.cluster import NODE_REGIONS, MakeCluster, TestCluster
from tests.hostile import (
    PAYLOAD,
    animated_gif,
    jpeg_with_payload,
    png_bomb,
    svg_with_script,
    text_as_jpeg,
    truncated_jpeg,
)
from tests.receiver import CallbackReceiver

NODES = [f"{r}-1" for r in NODE_REGIONS]
CHROME_ACCEPT = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"


async def get(cluster: TestCluster, url: str, **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
    assert cluster.session is not None
    async with cluster.session.get(url, headers=headers) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


def node_url(cluster: TestCluster, node_id: str, image_id: str, variant: str) -> str:
    return f"{cluster.node_settings[node_id].node.base_url}/i/{image_id}/{variant}"


def origin(up: dict[str, Any]) -> str:
    return str(up["node_id"])


def on_disk(cluster: TestCluster, image_id: str) -> dict[str, list[str]]:
    """Every file of ``image_id`` on every node (names only)."""
    out = {}
    for node_id in NODES:
        folder = cluster.store(node_id).image_dir(image_id)
        out[node_id] = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    return out


async def test_processing_records_metadata_and_makes_eager_thumbnails(cluster: TestCluster, testdata: Path) -> None:
    up = await cluster.upload((testdata / "astronaut_rot8_gps.jpg").read_bytes())
    assert up["status"] == "uploaded"  # the 201 does not wait for processing
    body = await cluster.wait_ready(up["image_id"])
    assert (body["format"], body["width"], body["height"]) == ("jpeg", 2048, 1536)  # as displayed
    assert body["pages"] == 1 and body["animated"] is False and body["colour_space"] == "srgb"
    assert body["exif"] == {
        "make": "minicdn-test",
        "model": "Model X",
        "taken_at": "2024-05-01T10:00:00",
        "orientation": 8,
        "had_gps": True,
    }  # the position itself is not stored
    assert body["had_gps"] is True and body["ready_at"] and body["reason"] is None
    files = on_disk(cluster, up["image_id"])[origin(up)]
    assert {"original", "thumb.jpg", "thumb.webp"} <= set(files)  # eager: there before the first request
    status, headers, data = await get(cluster, node_url(cluster, origin(up), up["image_id"], "thumb.webp"))
    assert status == 200 and headers["Content-Type"] == "image/webp"
    thumb = pyvips.Image.new_from_buffer(data, "")
    assert (thumb.width, thumb.height) == (150, 150)

    status, _, data = await get(cluster, f"{cluster.node_settings[NODES[0]].node.base_url}/healthz")
    codecs = json.loads(data)["codecs"]
    assert status == 200 and codecs["libvips"] == ".".join(str(pyvips.version(i)) for i in range(3))
    assert codecs["loaders"] == ["jpeg", "png", "nsgif", "webp", "heif", "tiff"] and codecs["pyvips"]
    assert set(codecs["decoders"]) == {"pillow", "pillow_heif", "libheif"} and all(codecs["decoders"].values())

    gif = await cluster.upload((testdata / "anim_tiny.gif").read_bytes())
    body = await cluster.wait_ready(gif["image_id"])
    assert body["animated"] is True and body["pages"] > 1 and body["exif"]["had_gps"] is False
    avif = await cluster.upload(
        bytes(pyvips.Image.new_from_file(str(testdata / "retina.webp")).heifsave_buffer(compression="av1", effort=0))
    )
    body = await cluster.wait_ready(avif["image_id"])
    assert body["format"] == "avif" and body["width"] > 0


async def test_variants_over_http_with_negotiation(cluster: TestCluster, testdata: Path) -> None:
    up = await cluster.upload((testdata / "chelsea_gps.jpg").read_bytes())
    await cluster.wait_ready(up["image_id"])
    image_id, node = up["image_id"], origin(up)
    etags = set()
    for accept, ctype in ((CHROME_ACCEPT, "image/avif"), ("image/webp,*/*", "image/webp"), ("*/*", "image/jpeg")):
        status, headers, data = await get(cluster, node_url(cluster, node, image_id, "w300.auto"), Accept=accept)
        assert status == 200 and headers["Content-Type"] == ctype, accept
        assert headers["Vary"] == "Accept"
        etags.add(headers["ETag"])
        assert pyvips.Image.new_from_buffer(data, "").width == 300
        assert b"Exif" not in data and b"GPS" not in data
    assert len(etags) == 3  # one cache entry per concrete format
    status, headers, _ = await get(cluster, node_url(cluster, node, image_id, "w300.webp"), Accept=CHROME_ACCEPT)
    assert status == 200 and headers["Content-Type"] == "image/webp" and "Vary" not in headers
    for variant, size in (("300x600.jpg", (300, 600)), ("fit300x300.png", (300, 200)), ("thumb.jpg", (150, 150))):
        status, _, data = await get(cluster, node_url(cluster, node, image_id, variant))
        image = pyvips.Image.new_from_buffer(data, "")
        assert status == 200 and (image.width, image.height) == size, variant
    for odd in ("w301.jpg", "300x301.webp", "fit100x100.png"):
        status, _, data = await get(cluster, node_url(cluster, node, image_id, odd))
        assert status == 400 and json.loads(data)["error"]["code"] == "size_not_allowed", odd
    status, _, data = await get(cluster, node_url(cluster, node, image_id, "w300.gif"))
    assert status == 404

    # The query service picks the variant for a box and resolves `auto` from a browser's Accept.
    status, body = await cluster.api(
        "GET", f"/v1/images/{image_id}/url", params={"w": 280, "h": 100, "fit": "cover", "dpr": 2}
    )
    assert status == 200 and body["variant"] == "600x300.auto"
    assert cluster.session is not None
    async with cluster.session.get(
        f"{cluster.query_url}/img/{image_id}",
        params={"w": 500},
        headers={"Accept": CHROME_ACCEPT},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 302 and resp.headers["Location"].endswith("/w600.avif")


async def test_hostile_inputs(cluster: TestCluster, testdata: Path) -> None:
    async def put(data: bytes) -> tuple[str, int, Any]:
        ticket = await cluster.request_upload(filename="photo.jpg")
        status, body = await cluster.put(ticket["upload_url"], data, headers={"Content-Type": "image/jpeg"})
        return ticket["image_id"], status, body

    bomb = await asyncio.to_thread(png_bomb)  # made off the loop: the cluster's heartbeats run on it
    refused_ids = []
    for data, status, code in (
        (text_as_jpeg(), 415, "unsupported_type"),
        (b"", 415, "unsupported_type"),
        (svg_with_script(), 415, "unsupported_type"),
        (animated_gif(501), 422, "invalid_image"),
    ):
        image_id, got, body = await put(data)
        assert (got, body["error"]["code"]) == (status, code), (data[:20], body)
        refused_ids.append(image_id)
    started = time.perf_counter()
    image_id, got, body = await put(bomb)
    assert got == 422 and "30000x30000" in body["error"]["message"]
    assert time.perf_counter() - started < 5  # refused from the header, never decoded
    refused_ids.append(image_id)

    # Truncated: the header is fine, so 201; the full decode in the sandbox rejects it and every file goes.
    cut = await cluster.upload(truncated_jpeg(testdata / "chelsea_gps.jpg"))
    assert cut["status"] == "uploaded"
    body = await cluster.wait_ready(cut["image_id"], status="rejected")
    assert "truncated" in body["reason"] and body["replicas"] == []
    await cluster.wait_for(
        lambda: on_disk(cluster, cut["image_id"]) == {n: [] for n in NODES},
        "the rejected image's files gone from every node",
    )
    status, _, _ = await get(cluster, node_url(cluster, origin(cut), cut["image_id"], "w300.jpg"))
    assert status == 404

    # A photo with a PHP/HTML payload appended: accepted, but no variant carries the payload.
    poly = await cluster.upload(jpeg_with_payload(testdata / "chelsea_gps.jpg"))
    await cluster.wait_ready(poly["image_id"])
    for variant in ("thumb.jpg", "thumb.webp", "w300.jpg", "w300.png", "w150.avif"):
        status, _, data = await get(cluster, node_url(cluster, origin(poly), poly["image_id"], variant))
        assert status == 200 and b"<?php" not in data and b"<script" not in data, variant
    for image_id in refused_ids:
        assert on_disk(cluster, image_id) == {n: [] for n in NODES}
    for node_id in NODES:
        assert cluster.files_under(node_id, "tmp") == []
    assert PAYLOAD in cluster.store(origin(poly)).path_for(poly["image_id"], ORIGINAL).read_bytes()


async def test_concurrent_requests_for_a_missing_variant_build_it_once(cluster: TestCluster, testdata: Path) -> None:
    up = await cluster.upload((testdata / "chelsea_gps.jpg").read_bytes())
    await cluster.wait_ready(up["image_id"])
    renderer = cluster.apps[origin(up)][node_keys.RENDERER]
    before = renderer.builds
    url = node_url(cluster, origin(up), up["image_id"], "w1200.webp")
    results = await asyncio.gather(*(get(cluster, url) for _ in range(20)))
    assert {status for status, _, _ in results} == {200}
    assert len({data for _, _, data in results}) == 1
    assert renderer.builds - before == 1


async def test_exact_and_near_duplicates(cluster: TestCluster, testdata: Path, tmp_path: Path) -> None:
    photo = (testdata / "chelsea_gps.jpg").read_bytes()
    first = await cluster.upload(photo)
    await cluster.wait_ready(first["image_id"])
    again = await cluster.upload(photo)
    body = await cluster.wait_ready(again["image_id"])
    assert body["duplicate_of"] == first["image_id"]
    await cluster.wait_replicated(first["image_id"])
    await cluster.wait_replicated(again["image_id"])
    for node_id in NODES:  # one copy of the bytes per node: both originals are the same inode
        store = cluster.store(node_id)
        a, b = (os.stat(store.path_for(i, ORIGINAL)) for i in (first["image_id"], again["image_id"]))
        assert (a.st_ino, a.st_nlink) == (b.st_ino, 2), node_id

    reencoded = tmp_path / "small.webp"
    pyvips.Image.new_from_buffer(photo, "").resize(0.5).webpsave(str(reencoded), Q=60)
    near = await cluster.upload(reencoded.read_bytes())
    assert (await cluster.wait_ready(near["image_id"]))["duplicate_of"] == first["image_id"]
    other = await cluster.upload((testdata / "astronaut_rot8_gps.jpg").read_bytes())
    assert (await cluster.wait_ready(other["image_id"]))["duplicate_of"] is None


@pytest.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    started = await CallbackReceiver().start()
    try:
        yield started
    finally:
        await started.stop()


async def test_quarantine_hook_holds_until_approved(
    make_cluster: MakeCluster, testdata: Path, tmp_path: Path, receiver: CallbackReceiver
) -> None:
    hook = tmp_path / "moderate.sh"
    hook.write_text('#!/bin/sh\necho "needs a human look: $MINICDN_CONTENT_TYPE"\nexit 1\n')
    hook.chmod(0o755)
    cluster = await make_cluster(moderation={"command": str(hook)}, callbacks={"allow_private": True})
    up = await cluster.upload((testdata / "chelsea_gps.jpg").read_bytes(), callback_url=receiver.url)
    body = await cluster.wait_ready(up["image_id"], status="quarantined")
    assert body["reason"] == "needs a human look: image/jpeg"
    status, _, _ = await get(cluster, node_url(cluster, origin(up), up["image_id"], "thumb.jpg"))
    assert status == 404
    status, body = await cluster.api("GET", f"/v1/images/{up['image_id']}/url")
    assert status == 409 and body["error"]["code"] == "not_ready"

    assert receiver.hits == []  # held is not an outcome: the app hears of the operator's decision
    status, body = await cluster.api("POST", f"/v1/images/{up['image_id']}/approve")
    assert status == 200 and body["status"] == "ready"
    status, body = await cluster.api("POST", f"/v1/images/{up['image_id']}/approve")
    assert status == 409 and body["error"]["code"] == "not_quarantined"
    await cluster.wait_for(
        lambda: _status_of(cluster, node_url(cluster, origin(up), up["image_id"], "thumb.jpg"), 200),
        "approved image served",
        5,
    )

    held = await cluster.upload((testdata / "coins_gray.png").read_bytes(), callback_url=receiver.url)
    await cluster.wait_ready(held["image_id"], status="quarantined")
    await cluster.wait_replicated(held["image_id"])
    for bad in (b"[" * 3000, b'{"reason": "a\\u0000b"}', b"[1]", b"{not json"):  # 400, and still held
        status, body = await cluster.api("POST", f"/v1/images/{held['image_id']}/reject", data=bad)
        assert status == 400 and body["error"]["code"] == "invalid_request", bad
    status, image = await cluster.api("GET", f"/v1/images/{held['image_id']}")
    assert image["status"] == "quarantined"
    status, body = await cluster.api("POST", f"/v1/images/{held['image_id']}/reject", json={"reason": "spam"})
    assert status == 200 and body["status"] == "rejected"
    await cluster.wait_for(
        lambda: on_disk(cluster, held["image_id"]) == {n: [] for n in NODES}, "rejected files gone from every node"
    )
    await cluster.wait_for(lambda: len(receiver.hits) == 2, "the decisions' callbacks", 5)
    assert [(h.body["image_id"], h.body["event"], h.body["reason"]) for h in receiver.hits] == [
        (up["image_id"], "image.ready", None),
        (held["image_id"], "image.rejected", "spam"),
    ]


async def _status_of(cluster: TestCluster, url: str, want: int) -> bool:
    status, _, _ = await get(cluster, url)
    return status == want


async def test_callbacks_signed_retried_and_guarded(
    make_cluster: MakeCluster, testdata: Path, receiver: CallbackReceiver
) -> None:
    receiver.answers.append(500)  # the first delivery fails: it must be retried
    cluster = await make_cluster(callbacks={"allow_private": True, "backoff_s": 0.05})
    receiver.signing_keys["k1"] = cluster.node_settings[NODES[0]].signing_key("k1") or b""
    ok = await cluster.upload((testdata / "chelsea_gps.jpg").read_bytes(), callback_url=receiver.url)
    bad = await cluster.upload(truncated_jpeg(testdata / "chelsea_gps.jpg"), callback_url=receiver.url)
    await cluster.wait_for(lambda: len(receiver.delivered()) == 2, "two callbacks", 10)
    by_id = {h.body["image_id"]: h for h in receiver.delivered()}
    assert by_id[ok["image_id"]].body["event"] == "image.ready" and by_id[ok["image_id"]].signed
    assert by_id[bad["image_id"]].body["event"] == "image.rejected" and by_id[bad["image_id"]].signed
    assert "truncated" in by_id[bad["image_id"]].body["reason"]
    assert len(receiver.hits) == 3
    # The retry of the refused POST carries the same delivery id; the two callbacks have different ones.
    failed, *rest = receiver.hits
    assert failed.status == 500 and [h.delivery_id for h in rest].count(failed.delivery_id) == 1
    assert len({h.delivery_id for h in rest}) == 2 and all(h.delivery_id for h in rest)
    rows: dict[str, tuple[str, int]] = {}

    async def settled() -> bool:
        async with cluster.apps["query"][query_keys.POOL].connection() as conn:
            cur = await conn.execute("SELECT delivery_id::text AS d, state, attempts FROM callback_outbox")
            rows.update({r["d"]: (r["state"], r["attempts"]) for r in await cur.fetchall()})
        return all(state != "pending" for state, _attempts in rows.values())

    # The outbox row is marked after the receiver's answer arrives, so it may trail the receiver by a moment.
    await cluster.wait_for(settled, "both outbox rows settled", 5)
    assert rows == {
        failed.delivery_id: ("delivered", 2),
        next(h.delivery_id for h in rest if h.delivery_id != failed.delivery_id): ("delivered", 1),
    }


async def test_callback_survives_a_node_restart(make_cluster: MakeCluster, testdata: Path) -> None:
    """The receiver is down while the image is processed; the origin node is stopped with the retry pending
    (only in Postgres now: sweeps are hours apart, so only the restart's start-up pass can send it)."""
    receiver = CallbackReceiver()  # port reserved, nothing listening yet
    cluster = await make_cluster(
        callbacks={
            "allow_private": True,
            "backoff_s": 0.3,
            "max_attempts": 20,
            "timeout_s": 1.0,
            "sweep_interval_s": 3600,
        }
    )
    receiver.signing_keys["k1"] = cluster.node_settings[NODES[0]].signing_key("k1") or b""
    up = await cluster.upload((testdata / "coins_gray.png").read_bytes(), callback_url=receiver.url)
    await cluster.wait_ready(up["image_id"])
    pool = cluster.apps["query"][query_keys.POOL]

    async def outbox() -> dict[str, Any]:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT state, attempts, last_error, next_at <= now() AS due,"
                " delivery_id::text AS delivery_id FROM callback_outbox"
            )
            return dict(await cur.fetchone() or {})

    await cluster.wait_for(lambda: _attempted(outbox()), "a failed first attempt")
    await cluster.stop_node(origin(up))
    await receiver.start()
    try:
        await cluster.wait_for(lambda: _due(outbox()), "the retry due")
        await asyncio.sleep(0.3)
        assert receiver.hits == []  # nobody else sends it: the node's in-memory retry died with it
        await cluster.start_node(origin(up))
        await cluster.wait_for(lambda: len(receiver.hits) == 1, "the callback after the restart", 10)
        for name, app in cluster.apps.items():  # every process sweeps once more: still exactly one POST
            if name != origin(up):
                await app[node_keys.CALLBACKS if name != "query" else query_keys.CALLBACKS].deliver_due()
        await asyncio.sleep(0.3)
        row = await outbox()
        [hit] = receiver.hits
        assert hit.signed and hit.body["image_id"] == up["image_id"] and hit.body["event"] == "image.ready"
        assert row["state"] == "delivered" and hit.delivery_id == row["delivery_id"] and row["attempts"] >= 2
    finally:
        await receiver.stop()


async def _attempted(row: Awaitable[dict[str, Any]]) -> bool:
    got = await row
    return bool(got) and got["attempts"] >= 1 and got["last_error"] is not None


async def _due(row: Awaitable[dict[str, Any]]) -> bool:
    got = await row
    return got["state"] == "pending" and bool(got["due"])


async def test_callback_urls_into_private_networks_are_refused(cluster: TestCluster) -> None:
    for url in (
        "http://127.0.0.1:9/x",
        "http://localhost/x",
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/x",
        "http://192.168.0.1/x",
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://100.64.0.1/x",
        "ftp://example.com/x",
        "http://user:pw@example.com/x",
    ):
        status, body = await cluster.api("POST", "/v1/uploads", json={"callback_url": url})
        assert status == 400 and body["error"]["code"] == "invalid_request", url
    status, _ = await cluster.api("POST", "/v1/uploads", json={"callback_url": "https://8.8.8.8/hook"})
    assert status == 201


async def test_delivery_refuses_private_addresses_without_connecting() -> None:
    receiver = await CallbackReceiver().start()
    from common.config import load_settings

    settings = load_settings(
        env={}, overrides={"signing": {"keys": {"k1": "x" * 20}, "active_kid": "k1"}, "callbacks": {"backoff_s": 0.01}}
    )
    sender = callbacks.CallbackSender(settings)
    try:
        for host in ("127.0.0.1", "localhost"):
            outcome = await sender.post(receiver.url.replace("127.0.0.1", host), {"image_id": "x"}, "d1")
            assert not outcome.delivered and outcome.refused
        assert receiver.hits == [] and sender.refused == 2
    finally:
        await sender.close()
        await receiver.stop()


async def test_sweep_reclaims_an_upload_a_crash_left_in_processing(cluster: TestCluster, testdata: Path) -> None:
    up = await cluster.upload((testdata / "coins_gray.png").read_bytes())
    await cluster.wait_ready(up["image_id"])
    processor = cluster.apps[origin(up)][node_keys.PROCESSOR]
    async with cluster.apps[origin(up)][node_keys.POOL].connection() as conn:  # as if the node died mid-job
        await conn.execute(
            "UPDATE images SET status = 'processing', ready_at = NULL WHERE image_id = %s", (up["image_id"],)
        )
    assert await processor.sweep_once() == 1
    body = await cluster.wait_ready(up["image_id"])
    assert body["ready_at"] and body["format"] == "png" and body["status"] == "ready"


async def test_a_lazy_build_that_fails_costs_one_request(cluster: TestCluster, testdata: Path) -> None:
    """Lazy builds run in sandboxed workers: a build that fails there (here: one over the worker's time limit,
    which kills it) gives that request a 500, and the node serves everything else. (An original damaged on
    disk never reaches a worker's codec: its build is refused before any decode and the request goes to a
    holder of a good copy, see tests/integration/test_integrity.py.)"""
    bad = await cluster.upload((testdata / "chelsea_gps.jpg").read_bytes())
    good = await cluster.upload((testdata / "coins_gray.png").read_bytes())
    await cluster.wait_ready(bad["image_id"])
    await cluster.wait_ready(good["image_id"])
    sandbox = cluster.apps[origin(bad)][node_keys.RENDERER].sandbox
    limit, sandbox.timeout_s = sandbox.timeout_s, 0.001
    try:
        status, _, body = await get(cluster, node_url(cluster, origin(bad), bad["image_id"], "w600.webp"))
    finally:
        sandbox.timeout_s = limit
    assert status == 500 and json.loads(body)["error"]["code"] == "render_failed"
    status, _, _ = await get(cluster, node_url(cluster, origin(good), good["image_id"], "w600.webp"))
    assert status == 200
    status, _, _ = await get(cluster, node_url(cluster, origin(bad), bad["image_id"], "thumb.jpg"))
    assert status == 200  # made at upload: still there
