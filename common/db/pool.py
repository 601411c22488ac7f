"""psycopg AsyncConnectionPool lifecycle, as an aiohttp cleanup_ctx-friendly async context manager.

The pool is set up so that a Postgres outage costs requests a fast, clear failure and no recovery delay:

- a connection is waited for ``database.busy_timeout_s`` while Postgres answers (a burst queues rather than
  failing), but only ``database.acquire_timeout_s`` once a connection attempt has failed (an outage answers at
  once); then ``PoolTimeout`` (a psycopg ``OperationalError``), which the error middleware
  (``common.httpkit``) answers `503 database_unavailable`;
- every connection is checked when it is handed out, so one the server closed meanwhile is replaced instead
  of failing the request: by its socket (readable: the server closed it or spoke unasked), then, only if
  so, by an empty query; the first broken one found also has every idle connection checked at once, so
  after a restart the stale ones go together rather than one request each;
- a lost connection is re-made for ``RECONNECT_TIMEOUT_S`` only (psycopg_pool's own backoff, from 1 s, would
  otherwise wait up to minutes between attempts after a long outage); after that the pool makes a new
  connection when a request asks for one, at once: Postgres back means service back, within a second.
"""

from __future__ import annotations

import asyncio
import logging
import select
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Self

from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from common.config import DatabaseSettings
from common.db.migrate import migrate
from common.db.rows import Pool

logger = logging.getLogger(__name__)
RECONNECT_TIMEOUT_S = 2.0  # background re-connects of a lost connection (attempts at 0 s and ~1 s), then on demand
OPEN_TIMEOUT_S = 5.0  # a pool that cannot open raises after this; a service's start-up tries again (common.startup)
CONNECT_TIMEOUT_S = 5  # libpq's connect_timeout: an unreachable host must not hold a pool worker for minutes


class _Pool(AsyncConnectionPool[AsyncConnection[DictRow]]):
    """A pool that tells a burst from an outage: ``timeout`` is the fail-fast bound, used once the last
    connection attempt failed; while Postgres answers, a wait may last ``busy_timeout``."""

    def __init__(self, conninfo: str, *, busy_timeout: float, **kwargs: Any) -> None:
        self.busy_timeout = busy_timeout
        self.reachable = True
        pool = self

        class Connection(AsyncConnection[DictRow]):
            @classmethod
            async def connect(cls, *args: Any, **kw: Any) -> Self:
                try:
                    conn = await super().connect(*args, **kw)
                except Exception:
                    pool.reachable = False
                    raise
                pool.reachable = True
                return conn

        super().__init__(conninfo, connection_class=Connection, **kwargs)

    async def getconn(self, timeout: float | None = None) -> AsyncConnection[DictRow]:  # noqa: ASYNC109 (psycopg_pool's signature)
        if timeout is not None:
            return await super().getconn(timeout)
        deadline = time.monotonic() + self.busy_timeout
        while True:  # in slices of the fail-fast bound, so a wait begun before an outage showed ends soon after
            try:
                return await super().getconn(max(0.001, min(self.timeout, deadline - time.monotonic())))
            except PoolTimeout:
                if not self.reachable or time.monotonic() >= deadline:
                    raise


def _maybe_closed(conn: AsyncConnection[Any]) -> bool:
    """Whether a connection handed out needs the empty query that proves it alive. An idle connection's socket
    has nothing to read: a server that closed it (a restart, a crash: the kernel closes its sockets) or said
    anything unasked made it readable. So a live one costs no round trip per checkout (one per transaction)."""
    if conn.closed or conn.broken:
        return True
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


@asynccontextmanager
async def open_pool(settings: DatabaseSettings, *, run_migrations: bool = True) -> AsyncIterator[Pool]:
    """Open a pool (rows as dicts), apply pending migrations, and close the pool on exit."""
    sweeping: set[asyncio.Task[None]] = set()

    async def sweep_idle() -> None:
        try:
            await pool.check()
        except Exception as exc:  # the pool closing, say: the next checkout checks again anyway
            logger.debug("checking the idle connections failed: %r", exc)

    async def check(conn: AsyncConnection[Any]) -> None:
        if not _maybe_closed(conn):
            return
        try:
            await AsyncConnectionPool.check_connection(conn)
        except Exception:
            if not sweeping:  # one sweep of the idle connections at a time
                task = asyncio.get_running_loop().create_task(sweep_idle(), name="pool-check")
                sweeping.add(task)
                task.add_done_callback(sweeping.discard)
            raise

    pool = _Pool(
        settings.url.reveal(),
        busy_timeout=settings.busy_timeout_s,
        min_size=settings.pool_min,
        max_size=settings.pool_max,
        kwargs={"row_factory": dict_row, "autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
        open=False,
        name="minicdn",
        timeout=settings.acquire_timeout_s,
        reconnect_timeout=RECONNECT_TIMEOUT_S,
        check=check,
    )
    await pool.open(wait=True, timeout=OPEN_TIMEOUT_S)
    try:
        if run_migrations:
            await migrate(pool)
        yield pool
    finally:
        for task in list(sweeping):
            task.cancel()
        await pool.close()
