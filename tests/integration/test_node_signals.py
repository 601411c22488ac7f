"""A storage node as a real process (`minicdn storage-node`), among an in-process cluster, under real signals:
SIGSTOP (hung: out of URLs and placement within the heartbeat timeout), SIGTERM (announces its stop, is out at
once, keeps its alternatives, finishes the request in flight, exits 0), and a second start on its data
directory (fails at once, naming the directory and the holder's pid, and touches nothing)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from common.procs import free_port
from tests.cluster import REGION_IPS, MakeCluster, TestCluster, make_jpeg

EU_CLIENT = REGION_IPS["eu-west"][1]
NODE = "eu-west-1"


def _config_env(sections: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The settings as MINICDN_<SECTION>_<KEY> variables (the documented form), over a clean environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINICDN_")}
    for section, values in sections.items():
        for key, value in values.items():
            if isinstance(value, dict):
                text = ",".join(f"{k}:{v}" for k, v in value.items())
            elif isinstance(value, list | tuple):
                text = ",".join(str(v) for v in value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            env[f"MINICDN_{section.upper()}_{key.upper()}"] = text
    return env


@contextmanager
def _node_process(cluster: TestCluster, log: Path, **node: Any) -> Iterator[subprocess.Popen[bytes]]:
    """``NODE`` with its in-process settings (``node`` overrides some), as a child process; killed at the end."""
    sections = {k: dict(v) for k, v in cluster.common.items()}
    sections["node"] = {**dataclasses.asdict(cluster.node_settings[NODE].node), **node}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "minicdn.cli", "storage-node"],
            env=_config_env(sections),
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            _signal_node(proc, signal.SIGCONT)
            proc.kill()
        proc.wait(timeout=30)


def _signal_node(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """``sig`` to every process of the node: the one started and its workers (``node.workers``), those still there."""
    try:
        children = [child.pid for child in psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        children = []
    for pid in [proc.pid, *children]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _tree(root: Path, live: subprocess.Popen[bytes]) -> list[Path]:
    """What is under ``root``, but the metrics files (``tmp/metrics/<kind>_<pid>.db``) of the ``live`` node's own
    processes: its workers create theirs as they first count something, whenever that is."""
    pids = {str(live.pid), *(str(child.pid) for child in psutil.Process(live.pid).children(recursive=True))}
    return sorted(
        p.relative_to(root)
        for p in root.rglob("*")
        if not (p.parent.name == "metrics" and p.suffix == ".db" and p.stem.rpartition("_")[2] in pids)
    )


def _text(log: Path) -> str:
    return log.read_text(errors="replace")


async def _url(cluster: TestCluster, image_id: str) -> dict[str, Any]:
    status, body = await cluster.api("GET", f"/v1/images/{image_id}/url", params={"client_ip": EU_CLIENT})
    assert status == 200, body
    return dict(body)


async def _swap_in_process(cluster: TestCluster) -> str:
    """An image on every node, then ``NODE`` stopped in-process, so that a real process can take its place."""
    up = await cluster.upload(make_jpeg(320, 240, seed=5), client_ip=REGION_IPS["us-east"][1])
    await cluster.wait_replicated(up["image_id"])
    await cluster.wait_ready(up["image_id"])
    await cluster.stop_node(NODE)
    return str(up["image_id"])


async def _wait_handed_out(cluster: TestCluster, image_id: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until the process serves (the in-process node is stopped: only it can answer) and is handed out."""
    base = cluster.node_settings[NODE].node.base_url
    assert cluster.session is not None
    session = cluster.session

    async def serving() -> bool:
        assert proc.poll() is None, _text(log)
        try:
            async with session.get(f"{base}/healthz") as resp:
                return resp.status == 200
        except aiohttp.ClientConnectionError:
            return False

    async def chosen() -> bool:
        return str((await _url(cluster, image_id))["node_id"]) == NODE

    await cluster.wait_for(serving, f"{NODE} (a process) serving", timeout_s=60)
    await cluster.wait_for(chosen, f"{NODE} (a process) handed out", timeout_s=10)


async def test_hung_node_is_avoided_within_the_timeout_and_a_second_start_on_its_directory_fails(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    cluster = await make_cluster()
    image_id = await _swap_in_process(cluster)
    data_dir = Path(cluster.node_settings[NODE].node.data_dir)
    timeout_s = cluster.node_settings[NODE].health.heartbeat_timeout_s
    with _node_process(cluster, tmp_path / "node.log") as proc:
        await _wait_handed_out(cluster, image_id, proc, tmp_path / "node.log")

        # A second start on the same directory (another port): refused at once, naming the directory and
        # the pid, and the live node's upload in flight is still in its tmp/.
        in_flight = data_dir / "tmp" / "an-upload-in-flight"
        in_flight.write_bytes(b"half an upload")
        before = _tree(data_dir, proc)
        second = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "minicdn.cli", "storage-node"],
            env=_config_env(
                {
                    **cluster.common,
                    "node": {**dataclasses.asdict(cluster.node_settings[NODE].node), "port": free_port()},
                }
            ),
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
        )
        err = second.stderr.decode()
        assert second.returncode != 0, err
        assert str(data_dir) in err and f"pid {proc.pid}" in err, err
        assert in_flight.read_bytes() == b"half an upload"
        assert _tree(data_dir, proc) == before
        assert (await _url(cluster, image_id))["node_id"] == NODE  # the live node was not disturbed

        # Hung: out of the URL answers and of placement within the heartbeat timeout.
        _signal_node(proc, signal.SIGSTOP)
        hung_at = time.monotonic()

        async def avoided() -> bool:
            ticket = await cluster.request_upload(client_ip=EU_CLIENT)
            return str((await _url(cluster, image_id))["node_id"]) != NODE and ticket["node_id"] != NODE

        # The bound is the timeout itself, plus what one round of the check above takes.
        await cluster.wait_for(avoided, f"{NODE} avoided", timeout_s=timeout_s + 1.0)
        detected_s = time.monotonic() - hung_at
        for _ in range(5):  # and it stays avoided
            assert await avoided()
        _signal_node(proc, signal.SIGCONT)
        print(f"\nFIGURES hung node out of URLs and placement after {detected_s:.2f}s (timeout {timeout_s}s)")


async def _slow_body(data: bytes, pieces: int, pause_s: float) -> AsyncIterator[bytes]:
    step = -(-len(data) // pieces)
    for i in range(0, len(data), step):
        yield data[i : i + step]
        await asyncio.sleep(pause_s)


async def test_sigterm_announces_the_stop_then_finishes_in_flight_then_exits(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    # A heartbeat timeout far longer than the test waits: only the announcement can take the node out.
    cluster = await make_cluster(health={"heartbeat_timeout_s": 30.0})
    image_id = await _swap_in_process(cluster)
    grace_s = 2.0
    log = tmp_path / "node.log"
    base = cluster.node_settings[NODE].node.base_url
    # A connection of its own per probe: a pooled one would outlive the listener.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as probe:

        async def listening() -> bool:
            try:
                async with probe.get(f"{base}/healthz") as resp:
                    return resp.status == 200
            except aiohttp.ClientConnectionError:
                return False

        async def out() -> bool:
            return str((await _url(cluster, image_id))["node_id"]) != NODE

        async def deaf() -> bool:
            return not await listening()

        with _node_process(cluster, log, stop_grace_s=grace_s) as proc:
            await _wait_handed_out(cluster, image_id, proc, log)
            # An upload in flight: its body arrives over longer than the grace period.
            ticket = await cluster.request_upload(client_ip=EU_CLIENT)
            assert ticket["node_id"] == NODE
            body = _slow_body(make_jpeg(320, 240, seed=6), pieces=30, pause_s=(grace_s + 4.0) / 30)
            put = asyncio.create_task(cluster.put(ticket["upload_url"], body))
            await asyncio.sleep(0.3)

            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            await cluster.wait_for(out, f"{NODE} out of the URL answers", timeout_s=grace_s * 0.8)
            out_s = time.monotonic() - signalled
            assert await listening()  # out while it still serves: it announced its stop, it did not go silent
            found = await _url(cluster, image_id)
            alternatives = [a["node_id"] for a in found["alternatives"]]
            assert found["node_id"] == "us-east-1" and alternatives == ["ap-southeast-1"]  # still a fail-over
            assert (await cluster.request_upload(client_ip=EU_CLIENT))["node_id"] != NODE

            # After the grace period it no longer listens, while the upload in flight is still arriving...
            await cluster.wait_for(deaf, f"{NODE} no longer listening", timeout_s=grace_s + 2.0)
            assert not put.done() and proc.poll() is None
            # ...and it finishes that upload, then exits cleanly.
            status, answer = await put
            assert status == 201 and answer["status"] == "uploaded", answer
            assert await asyncio.to_thread(proc.wait, 15) == 0, _text(log)
    print(f"\nFIGURES SIGTERM: out of the URL answers after {out_s:.2f}s (grace {grace_s}s, heartbeat timeout 30s)")
    assert (await cluster.replicas(ticket["image_id"]))[NODE] == "ok"  # durable on the node that stopped
