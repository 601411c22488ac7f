"""psycopg AsyncConnectionPool lifecycle, as an aiohttp cleanup_ctx-friendly async context manager."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from common.config import DatabaseSettings
from common.db.migrate import migrate
from common.db.rows import Pool


@asynccontextmanager
async def open_pool(settings: DatabaseSettings, *, run_migrations: bool = True) -> AsyncIterator[Pool]:
    """Open a pool (rows as dicts), apply pending migrations, and close the pool on exit."""
    pool = AsyncConnectionPool(
        settings.url.reveal(),
        # Parameterised only for the type checker (psycopg's documented way): the connections' rows are
        # dicts because of the row_factory below; typed reads go through common.db.rows.
        connection_class=AsyncConnection[DictRow],
        min_size=settings.pool_min,
        max_size=settings.pool_max,
        kwargs={"row_factory": dict_row, "autocommit": True},
        open=False,
        name="minicdn",
    )
    await pool.open(wait=True, timeout=30)
    try:
        if run_migrations:
            await migrate(pool)
        yield pool
    finally:
        await pool.close()
