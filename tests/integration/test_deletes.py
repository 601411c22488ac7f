"""DELETE /v1/images/{id}: tombstone, files gone from every member (one of them down at the time), space back."""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

from minicdn.embedded import EmbeddedNats
from tests.cluster import NODE_REGIONS, TestCluster, make_jpeg

NODES = [f"{r}-1" for r in NODE_REGIONS]


async def _stats(cluster: TestCluster, node_id: str) -> dict[str, int]:
    assert cluster.session is not None
    async with cluster.session.get(f"{cluster.node_settings[node_id].node.base_url}/stats") as resp:
        return dict(await resp.json())


async def test_delete_with_a_member_down_catches_up_and_frees_space(cluster: TestCluster) -> None:
    up = await cluster.upload(make_jpeg(seed=21), client_ip="3.0.1.10")
    keep = await cluster.upload(make_jpeg(seed=22), client_ip="3.0.1.10")
    image_id = up["image_id"]
    for i in (image_id, keep["image_id"]):
        await cluster.wait_replicated(i)
        await cluster.wait_ready(i)
    status, found = await cluster.api("GET", f"/v1/images/{image_id}/url", params={"w": 300})
    assert status == 200
    assert cluster.session is not None
    async with cluster.session.get(found["url"]) as resp:  # a variant exists on disk too
        assert resp.status == 200
    before = {n: await _stats(cluster, n) for n in NODES if n != "eu-west-1"}
    down_before = cluster.store("eu-west-1")
    down_before.prepare()
    used_before_down = down_before.usage().used_bytes

    await cluster.stop_node("eu-west-1")
    status, body = await cluster.api("DELETE", f"/v1/images/{image_id}")
    assert status == 202 and body["status"] == "deleted"
    status, body = await cluster.api("GET", f"/v1/images/{image_id}/url")
    assert status == 404 and body["error"]["code"] == "not_found"  # stops resolving at once
    status, body = await cluster.api("GET", f"/img/{image_id}")
    assert status == 404
    status, body = await cluster.api("GET", f"/v1/images/{image_id}")
    assert status == 200 and body["status"] == "deleted" and body["replicas"] == []

    def gone(node_id: str) -> bool:
        return not any(image_id in str(p) for p in cluster.files_under(node_id, "objects"))

    for node_id in before:
        await cluster.wait_for(functools.partial(gone, node_id), f"files gone on {node_id}", 10)
        after = await _stats(cluster, node_id)
        assert after["objects"] == before[node_id]["objects"] - 1
        assert after["used_bytes"] < before[node_id]["used_bytes"] - up["bytes"] + 1
    assert not gone("eu-west-1")  # it was down: its files are still there

    started = time.monotonic()
    await cluster.start_node("eu-west-1")
    await cluster.wait_for(lambda: gone("eu-west-1"), "the returning member catches up", 10)
    print(f"\nFIGURES delete catch-up of a returning member: {time.monotonic() - started:.2f}s after restart")
    stats = await _stats(cluster, "eu-west-1")
    assert stats["used_bytes"] <= used_before_down - up["bytes"]
    assert stats["objects"] == 1
    for node_id in NODES:
        assert cluster.disk_sha256(node_id, keep["image_id"]) == keep["sha256"]  # the other image stays
    # A repeat delete is accepted and changes nothing.
    status, _ = await cluster.api("DELETE", f"/v1/images/{image_id}")
    assert status == 202


async def test_delete_rejections(cluster: TestCluster) -> None:
    from common.db.api_keys import create_key
    from common.db.pool import open_pool

    up = await cluster.upload(make_jpeg(seed=23))
    private = await cluster.upload(make_jpeg(seed=24), visibility="private")
    async with open_pool(cluster.settings().database) as pool:
        _k, other = await create_key(pool, "other-app", ("app",))
    other_auth = {"Authorization": f"Bearer {other}"}
    assert cluster.session is not None
    async with cluster.session.delete(f"{cluster.query_url}/v1/images/{up['image_id']}") as resp:
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"
    status, body = await cluster.api("DELETE", f"/v1/images/{up['image_id']}", headers=other_auth)
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await cluster.api("DELETE", f"/v1/images/{private['image_id']}", headers=other_auth)
    assert status == 404
    for bad in ("nope", "abcdefghijklmnopqrstuv", "..%2f..%2fetc"):
        status, body = await cluster.api("DELETE", f"/v1/images/{bad}")
        assert status == 404 and body["error"]["code"] == "not_found"
    # Nothing was deleted by the rejected calls.
    for image in (up, private):
        status, body = await cluster.api("GET", f"/v1/images/{image['image_id']}")
        assert body["status"] != "deleted"


async def test_purge_hook_gets_every_url_prefix(cluster: TestCluster, tmp_path: Path) -> None:
    from query_service import keys
    from query_service.purge import purge_payload, run_purge_hooks

    out = tmp_path / "purged.json"
    script = tmp_path / "purge.py"
    script.write_text(f"import sys\nopen({str(out)!r}, 'w').write(sys.stdin.read())\n")
    settings = cluster.apps["query"][keys.SETTINGS].deletes
    from dataclasses import replace

    cfg = replace(settings, purge_command=f"{sys.executable} {script}")
    payload = purge_payload("abcdefghijklmnopqrstuv", ["http://a:1", "http://b:2/"], "http://q")
    assert await run_purge_hooks(cfg, payload) == []
    got = json.loads(out.read_text())
    assert got["url_prefixes"] == ["http://a:1/i/abcdefghijklmnopqrstuv/", "http://b:2/i/abcdefghijklmnopqrstuv/"]
    assert got["urls"] == ["http://q/img/abcdefghijklmnopqrstuv"]
    bad = replace(settings, purge_command=f"{sys.executable} -c 'import sys; sys.exit(3)'")
    failures = await run_purge_hooks(bad, payload)
    assert len(failures) == 1 and "exited 3" in failures[0]


async def test_delete_stops_resolving_on_every_query_service_instance(cluster: TestCluster) -> None:
    second = await cluster.start_query("query2")
    up = await cluster.upload(make_jpeg(seed=25), client_ip="3.0.1.10")
    await cluster.wait_replicated(up["image_id"])
    await cluster.wait_ready(up["image_id"])
    assert cluster.session is not None
    url = f"{second}/v1/images/{up['image_id']}/url"
    for _ in range(2):  # the second lookup is answered from that instance's location cache
        async with cluster.session.get(url, headers=cluster.auth) as resp:
            assert resp.status == 200
    status, _ = await cluster.api("DELETE", f"/v1/images/{up['image_id']}")  # through the first instance
    assert status == 202

    async def gone_there() -> bool:
        async with cluster.session.get(url, headers=cluster.auth) as resp:  # type: ignore[union-attr]
            return resp.status == 404

    await cluster.wait_for(gone_there, "the other instance forgets the image", 2)


async def test_a_real_delete_runs_the_purge_command_and_a_signed_webhook(
    tmp_path: Path, database_url: str, nats_server: EmbeddedNats, geoip_db: str
) -> None:
    """Through `DELETE /v1/images/{id}`: the command gets the payload on stdin, the webhook gets it POSTed,
    signed and with an idempotency key; a repeat delete purges nothing again; a failing webhook does not
    change the answer (the delete has committed)."""
    import asyncio
    import hashlib
    import hmac

    from aiohttp import web

    from common.procs import free_port

    got: list[tuple[bytes, dict[str, str]]] = []
    answer = {"status": 200}

    async def hook(request: web.Request) -> web.Response:
        got.append((await request.read(), dict(request.headers)))
        return web.json_response({}, status=answer["status"])

    app = web.Application()
    app.router.add_post("/purge", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    purged = tmp_path / "purged.jsonl"
    script = tmp_path / "purge.py"
    script.write_text(f"import sys\nopen({str(purged)!r}, 'a').write(sys.stdin.read() + '\\n')\n")
    c = TestCluster(
        tmp_path,
        database_url,
        nats_server.url,
        geoip_db,
        extra={
            "deletes": {
                "purge_command": f"{sys.executable} {script}",
                "purge_webhook": f"http://127.0.0.1:{port}/purge",
            }
        },
    )
    await c.start()
    try:
        up = await c.upload(make_jpeg(seed=26), client_ip="3.0.1.10")
        second = await c.upload(make_jpeg(seed=27), client_ip="3.0.1.10")
        image_id = up["image_id"]
        await c.wait_replicated(image_id)
        for i in (image_id, second["image_id"]):
            await c.wait_ready(i)  # deleting mid-processing is another test's subject
        status, body = await c.api("DELETE", f"/v1/images/{image_id}")
        assert status == 202 and body["status"] == "deleted"

        def command_lines() -> list[dict[str, object]]:
            return [json.loads(x) for x in purged.read_text().splitlines() if x] if purged.exists() else []

        await c.wait_for(lambda: len(got) == 1 and len(command_lines()) == 1, "both purge hooks", 10)
        members = sorted(s.node.base_url for s in c.node_settings.values())
        expected = {
            "event": "purge",
            "image_id": image_id,
            "url_prefixes": [f"{u}/i/{image_id}/" for u in members],
            "urls": [f"{c.query_url}/img/{image_id}"],
        }
        assert command_lines() == [expected]
        raw, headers = got[0]
        assert json.loads(raw) == expected
        assert headers["Content-Type"] == "application/json"
        assert headers["Idempotency-Key"] == f"minicdn-purge-{image_id}"
        kid, mac = headers["X-Minicdn-Signature"].split(":")
        key = c.settings().signing_key(kid)
        assert kid == "k1" and key is not None
        assert hmac.compare_digest(mac, hmac.new(key, raw, hashlib.sha256).hexdigest())
        assert not hmac.compare_digest(mac, hmac.new(key, raw + b" ", hashlib.sha256).hexdigest())

        # Deleting it again is accepted and purges nothing more.
        status, _ = await c.api("DELETE", f"/v1/images/{image_id}")
        assert status == 202
        await asyncio.sleep(0.5)
        assert len(got) == 1 and len(command_lines()) == 1

        # A webhook that fails is logged; the delete stands and the command still ran.
        answer["status"] = 500
        status, body = await c.api("DELETE", f"/v1/images/{second['image_id']}")
        assert status == 202
        await c.wait_for(lambda: len(got) == 2 and len(command_lines()) == 2, "hooks for the second delete", 10)
        assert json.loads(got[1][0])["image_id"] == second["image_id"]
        status, body = await c.api("GET", f"/v1/images/{second['image_id']}/url")
        assert status == 404
    finally:
        await c.stop()
        await runner.cleanup()
