"""Failover with real processes: SIGKILL one storage node of a `minicdn dev --no-restart` cluster; its region's
clients are sent to the next nearest node within the heartbeat timeout; restarted by hand, it catches up and is
used again; nothing is left behind at the end."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil

from minicdn.client import find_cluster, get_json, request_upload, upload_file
from tests.e2e.test_dev import wait_everywhere, wait_ready

HEARTBEAT_S = 0.3
TIMEOUT_S = 1.5
# The dev cluster's children inherit the environment, and MINICDN_* variables override their config files.
FAST_HEALTH = {
    "MINICDN_NODE_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
    "MINICDN_HEALTH_HEARTBEAT_TIMEOUT_S": str(TIMEOUT_S),
    "MINICDN_HEALTH_RECOVER_S": "0.6",
}
EU_CLIENT = "52.16.1.10"


def _start_dev(state: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-P", "-m", "minicdn.cli", "dev", "--state-dir", str(state), "--port", "0", "--no-restart"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "120", **FAST_HEALTH},
    )


def _start_node(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-P", "-m", "minicdn.cli", "storage-node", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **FAST_HEALTH},
        )


def _node_process(dev: psutil.Process, node_id: str) -> psutil.Process:
    """The node `minicdn dev` started (its workers, ``node.workers``, are that process's children)."""
    found = [p for p in dev.children() if f"{node_id}.toml" in " ".join(p.cmdline())]
    assert len(found) == 1, found
    return found[0]


async def test_sigkilled_node_fails_over_within_the_heartbeat_timeout(tmp_path: Path, testdata: Path) -> None:
    state = tmp_path / "state"
    proc = _start_dev(state)
    family: list[psutil.Process] = []
    back: subprocess.Popen[bytes] | None = None
    try:
        await wait_ready(proc, state)
        dev = psutil.Process(proc.pid)
        cluster = find_cluster(None, None, state)
        async with aiohttp.ClientSession() as session:
            up = await upload_file(session, cluster, testdata / "chelsea_gps.jpg")
            image_id = up["image_id"]
            await wait_everywhere(session, cluster, image_id)

            async def nearest() -> dict[str, str]:
                return dict(
                    await get_json(session, cluster, f"/v1/images/{image_id}/url", {"w": 300, "client_ip": EU_CLIENT})
                )

            assert (await nearest())["node_id"] == "eu-west-1"
            victim = _node_process(dev, "eu-west-1")
            family = dev.children(recursive=True)  # incl. the victim's sandbox workers: they must die with it
            victims_own = victim.children(recursive=True)  # its serving workers (and their sandbox workers)
            assert len(family) >= 6  # postgres, nats-server, three nodes, the query service
            # Every process of the node at once (its workers first: their parent would start them again), so that
            # it dies without a word, as on a crash of its machine.
            for process in [*victims_own, victim]:
                process.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            while (found := await nearest())["node_id"] == "eu-west-1":
                assert time.monotonic() - killed < TIMEOUT_S + 5, "still sent to the killed node"
                await asyncio.sleep(0.05)
            failover_s = time.monotonic() - killed
            # Within one timeout of the last heartbeat (sent at most one interval before the kill), plus slack
            # for this shared 2-core machine.
            assert failover_s < TIMEOUT_S + 1.0, failover_s
            assert found["node_id"] == "us-east-1"  # the next nearest to Ireland, not Singapore
            async with session.get(found["url"]) as resp:
                assert resp.status == 200 and len(await resp.read()) > 1000
            ticket = await request_upload(session, cluster, size=1000, client_ip=EU_CLIENT)
            assert ticket["node_id"] == "us-east-1"  # uploads go elsewhere too
            view = await get_json(session, cluster, "/v1/nodes")
            eu = next(n for n in view["nodes"] if n["node_id"] == "eu-west-1")
            assert eu["health"] == "unhealthy" and eu["state"] == "active"  # not dead: no repair triggered
            missed = await upload_file(session, cluster, testdata / "chelsea_gps.jpg", client_ip=EU_CLIENT)
            victim.wait(5)  # reaped by `minicdn dev`, its parent
            assert not victim.is_running()
            # With --no-restart `minicdn dev` reports the death but does not restart the node: bring it back by
            # hand, as an operator would, from the config `minicdn dev` wrote.
            assert not [p for p in dev.children() if "eu-west-1.toml" in " ".join(p.cmdline())]
            _gone, alive = psutil.wait_procs(victims_own, timeout=20)  # the data directory's lock went with them
            assert not alive, alive
            back = _start_node(state / "config" / "eu-west-1.toml", state / "logs" / "eu-west-1.log")
            family.append(psutil.Process(back.pid))
            restarted = time.monotonic()
            while (found := await nearest())["node_id"] != "eu-west-1":
                assert time.monotonic() - restarted < 20, "the returning node is not used again"
                await asyncio.sleep(0.05)
            used_again_s = time.monotonic() - restarted

            async def caught_up() -> bool:
                body = await get_json(session, cluster, f"/v1/images/{missed['image_id']}")
                return {r["node_id"]: r["state"] for r in body["replicas"]}.get("eu-west-1") == "ok"

            deadline = time.monotonic() + 20
            while not await caught_up():
                assert time.monotonic() < deadline, "the returning node did not catch up"
                await asyncio.sleep(0.1)
            caught_up_s = time.monotonic() - restarted
            async with session.get(found["url"]) as resp:
                assert resp.status == 200
        print(
            f"\nFIGURES failover (real processes, SIGKILL): eu-west client sent to us-east-1 {failover_s:.2f}s after "
            f"the kill (heartbeat {HEARTBEAT_S}s, timeout {TIMEOUT_S}s); restarted: used again after "
            f"{used_again_s:.2f}s, caught up the upload it missed after {caught_up_s:.2f}s"
        )
        back.send_signal(signal.SIGTERM)
        assert back.wait(20) == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        printed = (proc.stdout.read() if proc.stdout else b"").decode()
        assert f"eu-west-1 (pid {victim.pid}) was killed by SIGKILL" in printed, printed[-2000:]
        assert "not restarted" in printed and "restarted eu-west-1" not in printed, printed[-2000:]
        _gone, alive = psutil.wait_procs(family, timeout=10)
        assert alive == [], f"left behind: {[(p.pid, p.cmdline()) for p in alive]}"
    finally:
        if back is not None and back.poll() is None:
            back.kill()
            back.wait()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in family:
            if p.is_running():
                p.kill()
