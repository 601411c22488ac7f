"""The pool tells a burst from an outage (real Postgres): while Postgres answers, a request waits for a busy
connection up to ``database.busy_timeout_s``; once a connection attempt fails, waits end within
``database.acquire_timeout_s``, including a wait that began before the failure showed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from common.config import DatabaseSettings, Secret
from common.db.pool import open_pool
from minicdn.embedded import EmbeddedPostgres

FAST, BUSY = 0.3, 5.0


def _settings(url: str) -> DatabaseSettings:
    return DatabaseSettings(url=Secret(url), pool_min=1, pool_max=1, acquire_timeout_s=FAST, busy_timeout_s=BUSY)


async def test_a_burst_waits_past_the_fail_fast_bound(database_url: str) -> None:
    async with open_pool(_settings(database_url), run_migrations=False) as pool:

        async def hold() -> None:
            async with pool.connection() as conn:
                await conn.execute("SELECT pg_sleep(1.0)")

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0.1)
        started = time.monotonic()
        async with pool.connection() as conn:  # the only connection is busy for 3x the fail-fast bound
            assert (await (await conn.execute("SELECT 1 AS one")).fetchone()) == {"one": 1}
        assert time.monotonic() - started >= 2 * FAST
        await holder


async def test_an_outage_ends_every_wait_fast(tmp_path: Path) -> None:
    server = await asyncio.to_thread(EmbeddedPostgres(tmp_path / "pg").start)
    try:
        async with open_pool(_settings(server.url), run_migrations=False) as pool:

            async def wait_behind_a_busy_connection() -> float:
                with pytest.raises(psycopg.OperationalError):  # a PoolTimeout, or the server going away mid-query
                    async with pool.connection() as conn:
                        await conn.execute("SELECT 1")
                return time.monotonic()

            async def busy() -> None:
                with pytest.raises(psycopg.OperationalError):
                    async with pool.connection() as conn:
                        await conn.execute("SELECT pg_sleep(30)")

            holder = asyncio.create_task(busy())
            await asyncio.sleep(0.2)
            waiter = asyncio.create_task(wait_behind_a_busy_connection())
            await asyncio.sleep(0.2)
            await asyncio.to_thread(server.stop)  # the held connection breaks; re-connects are refused
            stopped = time.monotonic()
            assert (await waiter) - stopped < 2 * FAST  # not BUSY: it began waiting before the outage
            await holder
            started = time.monotonic()
            with pytest.raises(PoolTimeout):
                async with pool.connection():
                    pass
            assert time.monotonic() - started < 2 * FAST
    finally:
        await asyncio.to_thread(server.stop)
