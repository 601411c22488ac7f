"""`minicdn query-service` with `query.workers = 2`, started for real: two processes answer on one port, each with
its own memory; a key revoked through one is refused at once by both (pushed over NATS: the reconcile is made
too rare to be the reason); the workers stop with their parent, and die with it when it is killed; started while
Postgres is down, worker 0 waits for it (the other starts once worker 0 serves), up to `database.startup_wait_s`."""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import psutil

from common.config import DatabaseSettings, Secret
from common.db.api_keys import create_key
from common.db.pool import open_pool
from common.procs import free_port, python_module
from minicdn.embedded import EmbeddedNats, EmbeddedPostgres

WORKERS = 2
ROOT = Path(__file__).resolve().parents[2]


def _config(path: Path, database_url: str, nats: EmbeddedNats, port: int, geoip_db: str) -> None:
    tag = secrets.token_hex(4)
    path.write_text(
        f'[database]\nurl = "{database_url}"\n'
        f'[nats]\nurl = "{nats.url}"\nstream = "W{tag.upper()}"\nsubject_prefix = "w{tag}"\n'
        f'[signing]\nactive_kid = "k1"\n[signing.keys]\nk1 = "{secrets.token_urlsafe(24)}"\n'
        f'[geoip]\ndb = "{geoip_db}"\n'
        f"[query]\nport = {port}\nworkers = {WORKERS}\nreconcile_s = 600\n"
        "[capacity]\nenabled = false\n"
    )


async def _by_worker(
    session: aiohttp.ClientSession, url: str, want: Callable[[int, int], bool], headers: dict[str, str] | None = None
) -> dict[int, int]:
    """GET ``url`` on new connections (SO_REUSEPORT spreads those over the workers) until every worker answered
    in a way ``want(worker, status)`` accepts; returns each worker's last status. Which worker answered comes
    from a /healthz on the same connection."""
    last: dict[int, int] = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        async with aiohttp.ClientSession() as fresh:  # one connection: both requests reach the same worker
            async with fresh.get(url.rsplit("/v1/", 1)[0] + "/healthz") as resp:
                worker = int((await resp.json())["worker"])
            async with fresh.get(url, headers=headers or {}) as resp:
                status = resp.status
        if want(worker, status):
            last[worker] = status
        if len(last) == WORKERS:
            return last
    raise AssertionError(f"not every worker answered as wanted: {last}")


async def test_workers_share_the_port_and_a_revoked_key_is_refused_by_every_one_at_once(
    tmp_path: Path, database_url: str, nats_server: EmbeddedNats, geoip_db: str
) -> None:
    async with open_pool(DatabaseSettings(url=Secret(database_url))) as pool:  # migrations, and two keys
        _admin, admin_key = await create_key(pool, "admin", ("app", "admin"), rate_per_s=0)
        app_key, app_plain = await create_key(pool, "app", ("app",), rate_per_s=0)
    port = free_port()
    config = tmp_path / "query.toml"
    _config(config, database_url, nats_server, port, geoip_db)
    log = tmp_path / "query.log"
    parent = _start(config, log)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            workers = await _all_up(session, parent, base, log)

            # Each worker learns the key (an unknown image: the key is valid, the image is not found).
            lookup = f"{base}/v1/images/{'x' * 22}/url"
            auth = {"Authorization": f"Bearer {app_plain}"}
            assert set((await _by_worker(session, lookup, lambda w, s: s == 404, auth)).values()) == {404}

            async with session.delete(
                f"{base}/v1/keys/{app_key.key_id}", headers={"Authorization": f"Bearer {admin_key}"}
            ) as resp:
                assert resp.status == 200
            revoked_at = time.monotonic()
            # From the revocation's answer on, no worker accepts the key again: every answer is a 401.
            answers = await _by_worker(session, lookup, lambda w, s: (s == 401) or _fail(w, s), auth)
            assert set(answers.values()) == {401}
            assert time.monotonic() - revoked_at < 15  # the reconcile (600 s) played no part

        _stops_on_sigterm(parent, workers)
    finally:
        _kill(parent)


async def test_workers_die_with_their_parent(
    tmp_path: Path, database_url: str, nats_server: EmbeddedNats, geoip_db: str
) -> None:
    async with open_pool(DatabaseSettings(url=Secret(database_url))):
        pass  # migrations applied once, before the workers race to
    port = free_port()
    config = tmp_path / "query.toml"
    _config(config, database_url, nats_server, port, geoip_db)
    log = tmp_path / "query.log"
    parent = _start(config, log)
    try:
        async with aiohttp.ClientSession() as session:
            workers = await _all_up(session, parent, f"http://127.0.0.1:{port}", log)
        parent.kill()  # SIGKILL: no chance to stop them itself
        parent.wait()
        gone, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, f"workers outlived their parent: {alive}"
    finally:
        _kill(parent)


async def test_a_worker_started_while_postgres_is_down_waits_for_it(
    tmp_path: Path, nats_server: EmbeddedNats, geoip_db: str
) -> None:
    pg = await asyncio.to_thread(EmbeddedPostgres(tmp_path / "pg").start)
    await asyncio.to_thread(pg.stop)  # its data directory made and its port known: now down
    port = free_port()
    config = tmp_path / "query.toml"
    _config(config, pg.url, nats_server, port, geoip_db)
    log = tmp_path / "query.log"
    parent = _start(config, log)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await _until(lambda: _logged(log, "Postgres did not answer during start-up"), "the wait logged", log)
            # Waiting: worker 0 alone (the other starts once it serves), not serving, not exited.
            assert parent.poll() is None and len(psutil.Process(parent.pid).children()) == 1
            assert not await _answers(session, f"{base}/healthz")
            await asyncio.to_thread(pg.start)
            workers = await _all_up(session, parent, base, log, timeout_s=30)
            async with session.get(f"{base}/v1/images/{'x' * 22}/url") as resp:
                assert resp.status == 404, await resp.text()  # read from the database: not found (not a 503)
        _stops_on_sigterm(parent, workers)
    finally:
        _kill(parent)
        await asyncio.to_thread(pg.stop)


async def test_postgres_down_past_the_start_up_wait_fails_the_start(
    tmp_path: Path, nats_server: EmbeddedNats, geoip_db: str
) -> None:
    config = tmp_path / "query.toml"
    _config(config, f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", nats_server, free_port(), geoip_db)
    config.write_text(config.read_text().replace("[database]\n", "[database]\nstartup_wait_s = 8\n"))
    log = tmp_path / "query.log"
    started = time.monotonic()
    parent = _start(config, log)
    try:
        code = await asyncio.to_thread(parent.wait, 60)
    finally:
        _kill(parent)
    took_s = time.monotonic() - started
    assert code != 0 and took_s >= 8, (code, took_s)
    text = log.read_text()
    assert "Postgres did not answer during start-up" in text and "worker 0 exited with code" in text, text


async def _all_up(
    session: aiohttp.ClientSession, parent: subprocess.Popen[bytes], base: str, log: Path, timeout_s: float = 60
) -> list[psutil.Process]:
    """Every worker started and the service answering; the workers' processes."""

    async def up() -> bool:
        return len(psutil.Process(parent.pid).children()) == WORKERS and await _answers(session, f"{base}/healthz")

    await _until(up, "every worker up", log, timeout_s)
    return psutil.Process(parent.pid).children()


async def _logged(log: Path, text: str) -> bool:
    return text in await asyncio.to_thread(log.read_text)


def _stops_on_sigterm(parent: subprocess.Popen[bytes], workers: list[psutil.Process]) -> None:
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(30) == 0
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def _kill(parent: subprocess.Popen[bytes]) -> None:
    if parent.poll() is None:
        parent.kill()
        parent.wait()


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """`minicdn query-service --config FILE`, as an operator starts it."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            python_module("minicdn.cli", "query-service", "--config", str(config)),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


def _fail(worker: int, status: int) -> bool:
    raise AssertionError(f"worker {worker} answered {status} with a revoked key")


async def _answers(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url) as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def _until(check: Callable[[], Awaitable[bool]], what: str, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            tail = (await asyncio.to_thread(log.read_text))[-3000:]
            raise AssertionError(f"timed out waiting for {what}; log:\n{tail}")
        await asyncio.sleep(0.1)
