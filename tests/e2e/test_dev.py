"""`minicdn dev` as a real subprocess: ready, cluster.json, an upload end to end, clean stop, restart keeps images."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import psutil

from minicdn.client import ClusterRef, find_cluster, get_json, upload_file

READY_TIMEOUT_S = 120


def start_dev(state_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-P", "-m", "minicdn.cli", "dev", "--state-dir", str(state_dir), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "120"},
    )


async def wait_ready(proc: subprocess.Popen[bytes], state_dir: Path) -> dict[str, object]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not (state_dir / "cluster.json").exists():
        assert proc.poll() is None, (proc.stdout.read() if proc.stdout else b"").decode()
        assert time.monotonic() < deadline, "minicdn dev did not become ready"
        await asyncio.sleep(0.2)
    return dict(json.loads((state_dir / "cluster.json").read_text()))


async def wait_everywhere(
    session: aiohttp.ClientSession, cluster: ClusterRef, image_id: str, timeout_s: float = 20
) -> None:
    """Until the image is `ready` with an `ok` replica in each of the three regions."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = await get_json(session, cluster, f"/v1/images/{image_id}")
        if [r["state"] for r in body["replicas"]] == ["ok"] * 3 and body["status"] == "ready":
            return
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.2)


def check_every_process_healthy(proc: subprocess.Popen[bytes], info: dict[str, object]) -> None:
    """The moment cluster.json exists every process answers its health check and the query service sees
    every node healthy: `minicdn dev` never announces a cluster that is not running."""
    names = ""
    for child in psutil.Process(proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a short-lived worker may be gone already
            names += " ".join(child.cmdline()) + "\n"
    assert "postgres" in names and "nats-server" in names
    nodes = info["nodes"]
    assert isinstance(nodes, list) and len(nodes) == 3
    for node in nodes:
        with urllib.request.urlopen(f"{node['url']}/healthz", timeout=5) as resp:
            assert json.loads(resp.read())["node_id"] == node["node_id"]
    with urllib.request.urlopen(f"{info['query_url']}/healthz", timeout=5) as resp:
        health = json.loads(resp.read())
    assert health["nodes"] == health["healthy_nodes"] == 3


def stop_and_check_no_leftovers(proc: subprocess.Popen[bytes]) -> None:
    family = psutil.Process(proc.pid).children(recursive=True)
    assert len(family) >= 6  # postgres, nats-server, three nodes, the query service
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    gone, alive = psutil.wait_procs(family, timeout=10)
    assert alive == [], f"left behind: {[p.pid for p in alive]}"


async def check_operator_pages(session: aiohttp.ClientSession, info: dict[str, object]) -> None:
    """The dashboard and the upload demo are served, and the dashboard's data shows the live cluster."""
    for url in (info["dashboard_url"], info["upload_demo_url"]):
        async with session.get(str(url)) as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
    auth = {"Authorization": f"Bearer {info['api_key']}"}
    # Polled: each query worker keeps its own view of node health, and on a loaded 2-core machine one may
    # briefly miss a heartbeat while images are being processed.
    for _ in range(40):
        async with session.get(f"{info['query_url']}/v1/dashboard", headers=auth) as resp:
            data = await resp.json()
        if data["summary"]["healthy_nodes"] == 3:
            break
        await asyncio.sleep(0.25)
    assert data["summary"]["nodes"] == 3 and data["summary"]["healthy_nodes"] == 3
    assert sorted(n["region"] for n in data["nodes"]) == ["ap-southeast", "eu-west", "us-east"]


def check_request_id_in_logs(state: Path, image_id: str) -> None:
    """One access line per request, and the upload's request id in every process that handled it: the
    query service (ticket), the node that took the PUT, and the replicators of the two others."""
    logs = state / "logs"
    post = [line for line in (logs / "query.log").read_text().splitlines() if "POST /v1/uploads 201" in line]
    assert post, "no access line for the upload ticket"
    rid = post[-1].split("[", 1)[1].split("]", 1)[0]
    assert rid != "-"
    node_logs = {p.stem: p.read_text().splitlines() for p in logs.glob("*-1.log")}
    assert len(node_logs) == 3
    put = [
        n
        for n, lines in node_logs.items()
        if any(f"[{rid}]" in line and f"PUT /upload/{image_id} 201" in line for line in lines)
    ]
    assert len(put) == 1, "the PUT's access line carries the ticket's request id"
    copied = [
        n
        for n, lines in node_logs.items()
        if any(f"[{rid}]" in line and f"replicated {image_id}" in line for line in lines)
    ]
    assert sorted(copied) == sorted(set(node_logs) - set(put))


async def test_dev_cluster_end_to_end(tmp_path: Path, testdata: Path) -> None:
    state = tmp_path / "state"
    proc = start_dev(state)
    try:
        info = await wait_ready(proc, state)
        check_every_process_healthy(proc, info)
        assert {n["region"] for n in info["nodes"]} == {"us-east", "eu-west", "ap-southeast"}  # type: ignore[attr-defined]
        assert str(info["api_key"]).startswith("mk_")
        cluster = find_cluster(None, None, state)
        async with aiohttp.ClientSession() as session:
            up = await upload_file(session, cluster, testdata / "chelsea_gps.jpg")
            image_id = up["image_id"]
            await wait_everywhere(session, cluster, image_id)
            found = await get_json(session, cluster, f"/v1/images/{image_id}/url", {"w": 300})
            async with session.get(found["url"]) as resp:
                assert resp.status == 200 and resp.headers["Content-Type"] == "image/jpeg"
                assert len(await resp.read()) > 1000
            await check_operator_pages(session, info)
        check_request_id_in_logs(state, image_id)
        stop_and_check_no_leftovers(proc)
        printed = (proc.stdout.read() if proc.stdout else b"").decode()
        assert f"{info['dashboard_url']}#key={info['api_key']}" in printed
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
