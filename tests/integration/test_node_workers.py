"""`minicdn storage-node` with `node.workers = 2`, started for real among an in-process cluster (it takes the place of
one of its nodes): both processes serve on the one port; an upload taken by either is processed exactly once (by
the primary) and becomes ready; /metrics on either shows the whole node; a delete makes both answer 404 at once,
while the files are still on disk (the node's replicator is off: only their memory can have changed); a killed
worker is started again; a second start on the data directory fails while any process of the node lives (its
parent holds the lock, its workers inherit it, so a killed parent does not free it early); SIGTERM stops all;
started while Postgres is down, the node waits for it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from common.procs import free_port
from minicdn.embedded import EmbeddedPostgres
from tests.cluster import REGION_IPS, MakeCluster, TestCluster, make_jpeg

EU_CLIENT = REGION_IPS["eu-west"][1]
NODE = "eu-west-1"
WORKERS = 2


def _env(cluster: TestCluster, database_url: str = "", **node: Any) -> dict[str, str]:
    """The node's in-process settings (``node`` overrides some; ``database_url`` another Postgres) as
    MINICDN_<SECTION>_<KEY> variables, with two workers and no in-process replicator."""
    sections = {k: dict(v) for k, v in cluster.common.items()}
    if database_url:
        sections["database"]["url"] = database_url
    sections["node"] = {**dataclasses.asdict(cluster.node_settings[NODE].node), "workers": WORKERS, **node}
    sections.setdefault("replicator", {})["enabled"] = False
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
def _node(cluster: TestCluster, log: Path, database_url: str = "", **node: Any) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "minicdn.cli", "storage-node"],
            env=_env(cluster, database_url, **node),
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        psutil.wait_procs([p for p in _workers(proc.pid).values() if p.is_running()], timeout=30)


def _workers(parent: int) -> dict[int, psutil.Process]:
    """Worker index -> process, from the command lines of the parent's children."""
    found: dict[int, psutil.Process] = {}
    try:
        children = psutil.Process(parent).children()
    except psutil.Error:  # gone already
        return found
    for child in children:
        try:
            args = child.cmdline()
        except psutil.Error:
            continue
        if "--worker" in args:
            found[int(args[args.index("--worker") + 1])] = child
    return found


async def _swap_in_process(cluster: TestCluster) -> str:
    """An image on every node, then ``NODE`` stopped in-process, so that a real process can take its place."""
    up = await cluster.upload(make_jpeg(640, 480, seed=11), client_ip=REGION_IPS["us-east"][1])
    await cluster.wait_replicated(up["image_id"])
    await cluster.wait_ready(up["image_id"])
    await cluster.stop_node(NODE)
    return str(up["image_id"])


@asynccontextmanager
async def _on_worker(base: str, worker: int) -> AsyncIterator[aiohttp.ClientSession]:
    """A session with one connection, which worker ``worker`` serves: new connections (SO_REUSEPORT spreads them
    over the workers) until one is; which worker it is comes from a /healthz on that connection."""
    for _ in range(200):
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        try:
            async with session.get(f"{base}/healthz") as resp:
                answered = int((await resp.json())["worker"])
            if answered == worker:
                yield session
                return
        finally:
            await session.close()
    raise AssertionError(f"no connection reached worker {worker} in 200 tries")


async def _until(check: Callable[[], Awaitable[bool]], what: str, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            text = await asyncio.to_thread(log.read_text, errors="replace")
            tail = "\n".join(line for line in text.splitlines() if "minicdn.access" not in line)[-6000:]
            raise AssertionError(f"timed out waiting for {what}; log:\n{tail}")
        await asyncio.sleep(0.1)


async def _every_worker_up(base: str) -> bool:
    seen = set()
    for _ in range(40):
        try:
            async with aiohttp.ClientSession() as fresh, fresh.get(f"{base}/healthz") as resp:
                seen.add(int((await resp.json())["worker"]))
        except aiohttp.ClientError:
            return False
        if len(seen) == WORKERS:
            return True
    return False


def _sample(metrics: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text ``metrics`` (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{want}}} " if labels else f"{name} "
    for line in metrics.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


async def _second_start(cluster: TestCluster, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    """The same node (same data directory) started again on another port, as an operator's mistake would."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-P", "-m", "minicdn.cli", "storage-node"],
        env=_env(cluster, port=free_port()),
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )


async def _uploads_on_each_worker(cluster: TestCluster, base: str, log: Path) -> None:
    """An upload taken by each worker: both processed exactly once (by the primary), ready, replicated, counted in
    the node's usage and shown by /metrics on either worker."""
    async with _on_worker(base, 0) as session, session.get(f"{base}/stats") as resp:
        before = await resp.json()
    uploaded = []
    for worker in range(WORKERS):
        ticket = await cluster.request_upload(client_ip=EU_CLIENT)
        assert ticket["node_id"] == NODE, ticket
        async with _on_worker(base, worker) as session:
            async with session.put(ticket["upload_url"], data=make_jpeg(480, 360, seed=20 + worker)) as resp:
                assert resp.status == 201, await resp.text()
        uploaded.append(ticket["image_id"])
    for new in uploaded:
        await cluster.wait_ready(new, timeout_s=30)
    # /metrics on either worker: the whole node (prometheus_client's multiprocess mode). Processed twice, an upload
    # would count twice here (a second finish of a `ready` image is still counted by the processor).
    for worker in range(WORKERS):
        async with _on_worker(base, worker) as session, session.get(f"{base}/metrics") as resp:
            text = await resp.text()
        assert _sample(text, "minicdn_processing_total", outcome="ready") == 2, text
        assert _sample(text, "minicdn_processing_total", outcome="failed") == 0
        assert _sample(text, "minicdn_uploads_total", outcome="ok") == 2  # one counted by each worker
    for new in uploaded:
        await cluster.wait_replicated(new, timeout_s=30)

    # The node's usage counts both (the other worker reports what it stored): /stats from either worker, the
    # primary's own count or, from the other, what the primary's heartbeat last recorded.
    seen: dict[int, tuple[int, int]] = {}  # worker -> (objects, used bytes) it last answered

    async def both_counted() -> bool:
        for worker in range(WORKERS):
            async with _on_worker(base, worker) as session, session.get(f"{base}/stats") as resp:
                stats = await resp.json()
            seen[worker] = (stats["objects"], stats["used_bytes"])
            if stats["objects"] != before["objects"] + 2 or stats["used_bytes"] <= before["used_bytes"]:
                return False
        return True

    try:
        await _until(both_counted, "both uploads in the node's usage", log, timeout_s=10)
    except AssertionError as exc:
        raise AssertionError(f"before: {before}; (objects, used bytes) per worker last: {seen}; {exc}") from None


async def _delete_forgotten_at_once(cluster: TestCluster, base: str, url: str, image_id: str) -> float:
    """Delete ``image_id``: both workers answer 404 at once, on connections opened before (each remembered the image
    ready). Returns how long the slower took."""
    async with _on_worker(base, 0) as first, _on_worker(base, 1) as other:
        for session in (first, other):
            async with session.get(url) as resp:
                assert resp.status == 200
        status, body = await cluster.api("DELETE", f"/v1/images/{image_id}")
        assert status == 202 and body["status"] == "deleted", body
        deleted_at = time.monotonic()
        for worker, session in enumerate((first, other)):
            while True:
                async with session.get(url) as resp:
                    if resp.status == 404:
                        break
                    assert resp.status == 200, (worker, resp.status)
                assert time.monotonic() - deleted_at < 2.0, f"worker {worker} still serves the deleted image"
                await asyncio.sleep(0.02)
        return time.monotonic() - deleted_at


async def test_two_workers_serve_process_once_forget_a_delete_at_once_and_stop_together(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    cluster = await make_cluster()
    image_id = await _swap_in_process(cluster)
    base = cluster.node_settings[NODE].node.base_url
    data_dir = Path(cluster.node_settings[NODE].node.data_dir)
    log = tmp_path / "node.log"
    with _node(cluster, log) as parent:
        await _until(lambda: _every_worker_up(base), "both workers serving", log)
        workers = _workers(parent.pid)
        assert sorted(workers) == [0, 1], workers
        await cluster.wait_for(lambda: cluster.healthy_count(3), f"{NODE} (the primary beats) healthy", 15)

        # Both serve the stored variant, the same bytes; each then remembers the image (gate, metadata).
        url = f"{base}/i/{image_id}/w300.jpg"
        bodies = []
        for worker in range(WORKERS):
            async with _on_worker(base, worker) as session, session.get(url) as resp:
                assert resp.status == 200, (worker, await resp.text())
                bodies.append(await resp.read())
        assert bodies[0] == bodies[1] and bodies[0][:2] == b"\xff\xd8"

        await _uploads_on_each_worker(cluster, base, log)

        forgotten_s = await _delete_forgotten_at_once(cluster, base, url, image_id)
        # The files are still there (no replicator here removes them): the processes' memory answered.
        assert any(p.name == image_id for p in (data_dir / "objects").glob("*/*/*"))

        # A non-primary worker killed: started again (a new pid), and the node serves from both again.
        killed = workers[1]
        killed.kill()
        psutil.wait_procs([killed], timeout=10)

        async def replaced() -> bool:
            again = _workers(parent.pid).get(1)
            return again is not None and again.pid != killed.pid and await _every_worker_up(base)

        await _until(replaced, "worker 1 started again", log, timeout_s=30)
        assert parent.poll() is None

        # A second start on the data directory fails at once, naming the holder, and touches nothing (an upload in
        # flight keeps its file in tmp/, which a start would empty).
        in_flight = data_dir / "tmp" / "an-upload-in-flight"
        in_flight.write_bytes(b"half an upload")
        second = await _second_start(cluster, tmp_path)
        err = second.stderr.decode()
        assert second.returncode != 0 and str(data_dir) in err and f"pid {parent.pid}" in err, err
        assert in_flight.read_bytes() == b"half an upload"

        # SIGTERM to the parent: every process stops, cleanly.
        workers = _workers(parent.pid)
        parent.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(parent.wait, 30) == 0, log.read_text(errors="replace")[-3000:]
        _gone, alive = psutil.wait_procs(list(workers.values()), timeout=10)
        assert not alive
    print(f"\nFIGURES delete forgotten by both workers within {forgotten_s:.3f}s")


async def test_a_killed_parent_keeps_the_directory_locked_until_its_last_worker_exits(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    cluster = await make_cluster()
    await cluster.stop_node(NODE)
    base = cluster.node_settings[NODE].node.base_url
    data_dir = Path(cluster.node_settings[NODE].node.data_dir)
    log = tmp_path / "node.log"
    grace_s = 4.0
    with _node(cluster, log, stop_grace_s=grace_s) as parent:
        await _until(lambda: _every_worker_up(base), "both workers serving", log)
        workers = list(_workers(parent.pid).values())
        parent.kill()  # SIGKILL: its workers get SIGTERM (parent-death signal) and stop in their own time
        parent.wait()
        await asyncio.sleep(0.5)
        assert any(w.is_running() for w in workers)
        # Still locked by the workers, which inherited the parent's descriptors.
        second = await _second_start(cluster, tmp_path)
        err = second.stderr.decode()
        assert second.returncode != 0 and str(data_dir) in err, err
        assert any(w.is_running() for w in workers)  # the refusal came while they lived
        _gone, alive = psutil.wait_procs(workers, timeout=grace_s + 20)
        assert not alive
    # Once the last one is gone, the directory is free: the node starts again.
    with _node(cluster, tmp_path / "again.log") as again:
        await _until(lambda: _every_worker_up(base), "the node started again", tmp_path / "again.log")
        again.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(again.wait, 30) == 0


async def test_a_node_started_while_postgres_is_down_waits_for_it(make_cluster: MakeCluster, tmp_path: Path) -> None:
    """Its primary sets up again every second until Postgres answers (the data-directory lock it adopted stays
    held: a set-up begun again adopts it again), then the other worker starts; both serve."""
    cluster = await make_cluster()
    pg = await asyncio.to_thread(EmbeddedPostgres(tmp_path / "pg").start)
    await asyncio.to_thread(pg.stop)  # its data directory made and its port known: now down
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "node.log"
    cold = str(tmp_path / "cold") if cluster.node_settings[NODE].node.cold_dir else ""
    try:
        with _node(
            cluster,
            log,
            pg.url,
            node_id="eu-west-9",
            port=port,
            base_url=base,
            data_dir=str(tmp_path / "data"),
            cold_dir=cold,
        ) as parent:
            await _until(lambda: _logged_twice(log, "Postgres did not answer during start-up"), "two waits logged", log)
            assert parent.poll() is None and sorted(_workers(parent.pid)) == [0]
            await asyncio.to_thread(pg.start)
            await _until(lambda: _every_worker_up(base), "both workers serving", log, timeout_s=30)
            parent.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(parent.wait, 30) == 0
    finally:
        await asyncio.to_thread(pg.stop)


async def _logged_twice(log: Path, text: str) -> bool:
    return (await asyncio.to_thread(log.read_text, errors="replace")).count(text) >= 2
