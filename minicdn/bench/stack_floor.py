"""The stack's floor for `minicdn bench --peers`' upload row: the least an upload can cost on minicdn's own
parts (aiohttp, psycopg, nats-py, Postgres, JetStream with ``sync_interval: always``), with its durability
kept and everything else left out.

A ticket service commits a row; an origin takes the PUT, fsyncs the file and its directory, commits the row
and publishes to JetStream before its 201; two replicas pull from JetStream, fetch the bytes over HTTP,
fsync them and commit their rows in one transaction per batch. There is no validation, processing, audit,
metrics, log, auth, memory of locations or anything else minicdn does, so minicdn's rate over this one is the
share of the stack's best that its features leave, and this one's over SeaweedFS's says how far the stack
itself can go on this machine.

Each part runs as processes of its own (``python -m minicdn.bench.stack_floor ROLE ...``): one per core for
tickets and for the origin, sharing their ports as minicdn's query service and node processes do, and one per
replica, beside their own embedded Postgres and nats-server in a temp dir; everything is stopped on the way
out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import psycopg
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from common.procs import die_with_parent, free_port
from minicdn.embedded import EmbeddedNats, EmbeddedPostgres, stop_process, wait_for_port

SUBJECT = "floor.uploaded"
REPLICAS = ("replica-1", "replica-2")
BATCH = 32  # messages a replica pulls at a time, as minicdn's replicator does under a burst


def _durable_write(path: Path, data: bytes) -> None:
    """Write, fsync, rename into place and fsync the directory: what minicdn does before it acknowledges."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _pool(dsn: str, size: int) -> AsyncConnectionPool[Any]:
    return AsyncConnectionPool(dsn, min_size=size, max_size=size, kwargs={"autocommit": True}, open=False)


async def _serve(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=True).start()
    await asyncio.Event().wait()


async def _ticket_role(port: int, dsn: str) -> None:
    pool = _pool(dsn, 4)
    await pool.open()

    async def ticket(request: web.Request) -> web.Response:
        name = str((await request.json()).get("name", ""))
        image_id = uuid.uuid4().hex
        async with pool.connection() as conn:
            await conn.execute("INSERT INTO images (id, state, name) VALUES (%s, 'requested', %s)", (image_id, name))
        return web.json_response({"id": image_id}, status=201)

    app = web.Application()
    app.router.add_post("/uploads", ticket)
    await _serve(app, port)


async def _origin_role(port: int, dsn: str, nats_url: str, root: Path) -> None:
    pool = _pool(dsn, 4)
    await pool.open()
    js = (await nats.connect(nats_url)).jetstream()

    async def put(request: web.Request) -> web.Response:
        image_id = request.match_info["id"]
        data = await request.read()
        sha256 = hashlib.sha256(data).hexdigest()
        await asyncio.to_thread(_durable_write, root / image_id[:2] / image_id, data)
        async with pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE images SET state = 'uploaded', sha256 = %s, bytes = %s WHERE id = %s AND state = 'requested'",
                (sha256, len(data), image_id),
            )
        if cur.rowcount != 1:
            return web.json_response({"error": "already_uploaded"}, status=409)
        await js.publish(SUBJECT, image_id.encode())
        return web.json_response({"id": image_id, "sha256": sha256}, status=201)

    async def get(request: web.Request) -> web.FileResponse:
        image_id = request.match_info["id"]
        return web.FileResponse(root / image_id[:2] / image_id)

    app = web.Application(client_max_size=64 << 20)
    app.router.add_put("/u/{id}", put)
    app.router.add_get("/o/{id}", get)
    await _serve(app, port)


async def _replica_role(name: str, dsn: str, nats_url: str, origin: str, root: Path) -> None:
    pool = _pool(dsn, 2)
    await pool.open()
    sub = await (await nats.connect(nats_url)).jetstream().pull_subscribe(SUBJECT, durable=name)
    async with aiohttp.ClientSession() as session:

        async def copy(image_id: str) -> None:
            async with session.get(f"{origin}/o/{image_id}") as resp:
                resp.raise_for_status()
                data = await resp.read()
            await asyncio.to_thread(_durable_write, root / image_id[:2] / image_id, data)

        while True:
            try:
                msgs = await sub.fetch(BATCH, timeout=1)
            except TimeoutError:  # (nats-py raises asyncio's, or its own subclass of it)
                continue
            ids = [m.data.decode() for m in msgs]
            await asyncio.gather(*(copy(i) for i in ids))
            async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                await cur.executemany("INSERT INTO replicas (id, node) VALUES (%s, %s)", [(i, name) for i in ids])
            for m in msgs:
                await m.ack()


@dataclass
class StackFloor:
    ticket_url: str
    origin_url: str
    dsn: str
    procs: dict[str, list[subprocess.Popen[bytes]]] = field(default_factory=dict)  # "ticket", "origin", "replica-1"..
    servers: dict[str, int] = field(default_factory=dict)  # "postgres", "nats": their pids

    @property
    def pids(self) -> dict[str, frozenset[int]]:
        """Every process whose CPU an upload costs, by part."""
        return {name: frozenset(p.pid for p in procs) for name, procs in self.procs.items()} | {
            name: frozenset({pid}) for name, pid in self.servers.items()
        }

    async def write(self, session: aiohttp.ClientSession, body: bytes, name: str) -> None:
        """A ticket, then the PUT: the same two requests as a minicdn upload."""
        async with session.post(f"{self.ticket_url}/uploads", json={"name": name}) as resp:
            if resp.status != 201:
                raise RuntimeError(f"stack floor ticket: {resp.status}")
            image_id = (await resp.json())["id"]
        async with session.put(f"{self.origin_url}/u/{image_id}", data=body) as resp:
            await resp.read()
            if resp.status != 201:
                raise RuntimeError(f"stack floor PUT: {resp.status}")

    async def replicated(self, timeout_s: float = 120) -> None:
        """Until every uploaded file has both replica rows (the CPU of the copies counts, as minicdn's does)."""
        deadline = time.monotonic() + timeout_s
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            while time.monotonic() < deadline:
                cur = await conn.execute(
                    "SELECT (SELECT count(*) FROM images WHERE state = 'uploaded'), (SELECT count(*) FROM replicas)"
                )
                row = await cur.fetchone()
                if row is not None and row[1] >= row[0] * len(REPLICAS):
                    return
                if dead := [name for name, procs in self.procs.items() if any(p.poll() is not None for p in procs)]:
                    raise RuntimeError(f"stack floor: {', '.join(dead)} exited (logs beside it)")
                await asyncio.sleep(0.05)
        raise RuntimeError(f"stack floor: not replicated within {timeout_s:g} s")


def _spawn(role: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "minicdn.bench.stack_floor", *role],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )


async def _setup(dsn: str, nats_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("CREATE TABLE images (id text PRIMARY KEY, state text, name text, sha256 text, bytes int)")
        await conn.execute("CREATE TABLE replicas (id text, node text, PRIMARY KEY (id, node))")
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().add_stream(name="FLOOR", subjects=[SUBJECT])
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def stack_floor(root: Path) -> AsyncIterator[StackFloor]:
    """The floor's processes running in ``root``, their own Postgres and nats-server beside them."""
    pg, nt = EmbeddedPostgres(root / "pg"), EmbeddedNats(root / "nats")
    ticket_port, origin_port = free_port(), free_port()
    floor = StackFloor(f"http://127.0.0.1:{ticket_port}", f"http://127.0.0.1:{origin_port}", pg.url)
    try:
        await asyncio.to_thread(pg.start)
        await asyncio.to_thread(nt.start)
        await _setup(pg.url, nt.url)
        roles = {
            "ticket": ["ticket", str(ticket_port), pg.url],
            "origin": ["origin", str(origin_port), pg.url, nt.url, str(root / "origin")],
            **{r: ["replica", r, pg.url, nt.url, floor.origin_url, str(root / r)] for r in REPLICAS},
        }
        for name, role in roles.items():
            # As many ticket and origin processes as minicdn runs query-service and node processes by default
            # (one per core, sharing the port); a replicator is one process, as in a node.
            count = 1 if name in REPLICAS else os.cpu_count() or 1
            floor.procs[name] = [_spawn(role, root / f"{name}-{i}.log") for i in range(count)]
        for port, name in ((ticket_port, "ticket"), (origin_port, "origin")):
            for i, proc in enumerate(floor.procs[name]):
                await asyncio.to_thread(wait_for_port, port, proc, 30, name, root / f"{name}-{i}.log")
        assert pg.proc is not None and nt.proc is not None
        floor.servers = {"postgres": pg.proc.pid, "nats": nt.proc.pid}
        yield floor
    finally:
        for proc in (p for procs in floor.procs.values() for p in procs):
            await asyncio.to_thread(stop_process, proc)
        await asyncio.to_thread(nt.stop)
        await asyncio.to_thread(pg.stop)


def main(argv: list[str]) -> None:
    role, args = argv[0], argv[1:]
    if role == "ticket":
        asyncio.run(_ticket_role(int(args[0]), args[1]))
    elif role == "origin":
        asyncio.run(_origin_role(int(args[0]), args[1], args[2], Path(args[3])))
    elif role == "replica":
        asyncio.run(_replica_role(args[0], args[1], args[2], args[3], Path(args[4])))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
