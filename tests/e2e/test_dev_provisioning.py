"""`minicdn dev --node-capacity 2MB` filled by uploads provisions a new set by itself (real processes), with a
second query-service process running beside the first: exactly one set is provisioned."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from common.procs import free_port
from minicdn.client import ClientError, find_cluster, get_json, put_bytes, request_upload
from tests.cluster import make_jpeg
from tests.e2e.test_dev import stop_and_check_no_leftovers, wait_ready


def _spawn(args: list[str], env: dict[str, str] | None = None, quiet: bool = False) -> subprocess.Popen[bytes]:
    out = subprocess.DEVNULL if quiet else subprocess.PIPE
    return subprocess.Popen(
        [sys.executable, "-P", "-m", "minicdn.cli", *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "120", **(env or {})},
    )


async def test_dev_cluster_provisions_a_new_set_when_filled(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = _spawn(["dev", "--state-dir", str(state), "--port", "0", "--node-capacity", "2MB"])
    second: subprocess.Popen[bytes] | None = None
    try:
        await wait_ready(proc, state)
        port = free_port()
        # Another query-service instance on the same database and NATS: two capacity monitors.
        second = _spawn(
            ["query-service", "--config", str(state / "config" / "query.toml")],
            env={"MINICDN_QUERY_PORT": str(port)},
            quiet=True,
        )
        cluster = find_cluster(None, None, state)
        uploaded: list[dict[str, str]] = []
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            for seed in range(60):
                data = make_jpeg(480, 360, seed=300 + seed)
                try:
                    ticket = await request_upload(session, cluster, size=len(data), client_ip="3.0.1.10")
                except ClientError as exc:
                    assert "no_capacity" in str(exc)
                    await asyncio.sleep(1)
                    continue
                await put_bytes(session, ticket["upload_url"], data, len(data))
                uploaded.append(ticket)
                if ticket["node_id"].endswith("-2"):
                    break
                await asyncio.sleep(0.5)
                assert time.monotonic() - started < 90, "no new set within 90 s"
            assert uploaded[-1]["node_id"].endswith("-2"), [u["node_id"] for u in uploaded]
            took_s = time.monotonic() - started
            # The plan succeeds once the leader has seen every new node healthy (its own heartbeats, after
            # recovery hysteresis and a monitor tick); both monitors keep running meanwhile: still one plan.
            await asyncio.sleep(5)
            deadline = time.monotonic() + 30
            while True:
                view = await get_json(session, cluster, "/v1/nodes")
                new_sets = [e for e in view["events"] if e["kind"] == "new_set"]
                if all(e["state"] in ("succeeded", "failed") for e in new_sets) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert [(e["set_id"], e["state"]) for e in new_sets] == [("set-2", "succeeded")], new_sets
            assert sorted(s["name"] for s in view["sets"]) == ["set-1", "set-2"]
            first = uploaded[0]["image_id"]
            assert (await get_json(session, cluster, f"/v1/images/{first}"))["status"] == "ready"
            found = await get_json(session, cluster, f"/v1/images/{first}/url", {"w": 150})
            async with session.get(found["url"]) as resp:
                assert resp.status == 200  # old images still served
        info = json.loads((state / "cluster.json").read_text())
        assert {n["node_id"] for n in info["nodes"]} >= {"us-east-2", "eu-west-2", "ap-southeast-2"}
        print(
            f"\nFIGURES dev provisioning: new set taking uploads {took_s:.1f}s after filling began "
            f"({len(uploaded)} uploads of ~{len(data) // 1000} KB into 2 MB nodes); event: {new_sets[0]['outcome']}"
        )
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
        stop_and_check_no_leftovers(proc)
    finally:
        for p in (second, proc):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
