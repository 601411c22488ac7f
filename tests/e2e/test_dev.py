"""`minicdn dev` as a real subprocess: ready, cluster.json, an upload end to end, clean stop, restart keeps images."""

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
import psutil

from common.client import find_cluster, get_json, upload_file

READY_TIMEOUT_S = 120


def start_dev(state_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "common.cli", "dev", "--state-dir", str(state_dir), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "120"},
    )


async def wait_ready(proc: subprocess.Popen[bytes], state_dir: Path) -> dict[str, object]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not (state_dir / "cluster.json").exists():
        assert proc.poll() is None, (proc.stdout.read() if proc.stdout else b"").decode()
        assert time.monotonic() < deadline, "minicdn dev did not become ready"
        await asyncio.sleep(0.2)
    return dict(json.loads((state_dir / "cluster.json").read_text()))


def stop_and_check_no_leftovers(proc: subprocess.Popen[bytes]) -> None:
    family = psutil.Process(proc.pid).children(recursive=True)
    assert len(family) >= 6  # postgres, nats-server, three nodes, the query service
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    gone, alive = psutil.wait_procs(family, timeout=10)
    assert alive == [], f"left behind: {[p.pid for p in alive]}"


async def test_dev_cluster_end_to_end(tmp_path: Path, testdata: Path) -> None:
    state = tmp_path / "state"
    proc = start_dev(state)
    try:
        info = await wait_ready(proc, state)
        assert {n["region"] for n in info["nodes"]} == {"us-east", "eu-west", "ap-southeast"}  # type: ignore[attr-defined]
        assert str(info["api_key"]).startswith("mk_")
        cluster = find_cluster(None, None, state)
        async with aiohttp.ClientSession() as session:
            up = await upload_file(session, cluster, testdata / "chelsea_gps.jpg")
            image_id = up["image_id"]
            deadline = time.monotonic() + 20
            while True:
                body = await get_json(session, cluster, f"/v1/images/{image_id}")
                if [r["state"] for r in body["replicas"]] == ["ok"] * 3 and body["status"] == "ready":
                    break
                assert time.monotonic() < deadline, body
                await asyncio.sleep(0.2)
            found = await get_json(session, cluster, f"/v1/images/{image_id}/url", {"w": 300})
            async with session.get(found["url"]) as resp:
                assert resp.status == 200 and resp.headers["Content-Type"] == "image/jpeg"
                assert len(await resp.read()) > 1000
        stop_and_check_no_leftovers(proc)
        assert not (state / "cluster.json").exists()

        # A restart on the same state directory keeps the image and the key.
        proc = start_dev(state)
        info2 = await wait_ready(proc, state)
        assert info2["api_key"] == info["api_key"]
        async with aiohttp.ClientSession() as session:
            body = await get_json(session, find_cluster(None, None, state), f"/v1/images/{image_id}")
            assert body["sha256"] == up["sha256"] and len(body["replicas"]) == 3
        stop_and_check_no_leftovers(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
