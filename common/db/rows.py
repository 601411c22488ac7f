"""The typed pool and typed reads: every query that returns rows names the ``TypedDict`` of its columns,
so a caller that reads a column the query does not return is a type error, not a KeyError at run time."""

from __future__ import annotations

from typing import Any, LiteralString, TypeAlias, TypeVar

from psycopg import AsyncConnection
from psycopg.abc import Params
from psycopg.rows import DictRow, class_row
from psycopg_pool import AsyncConnectionPool

Pool: TypeAlias = AsyncConnectionPool[AsyncConnection[DictRow]]
Conn: TypeAlias = AsyncConnection[DictRow]
Row = TypeVar("Row")


async def fetch_one(
    db: Pool | AsyncConnection[Any], row: type[Row], query: LiteralString, params: Params | None = None
) -> Row | None:
    """The first row of ``query`` as a ``row`` (a TypedDict or dataclass), or None."""
    if isinstance(db, AsyncConnection):
        return await _one(db, row, query, params)
    async with db.connection() as conn:
        return await _one(conn, row, query, params)


async def fetch_all(
    db: Pool | AsyncConnection[Any],
    row: type[Row],
    query: LiteralString,
    params: Params | None = None,
    *,
    prepare: bool | None = None,
) -> list[Row]:
    """Every row of ``query`` as ``row`` values. ``prepare=False``: never a server-side prepared statement, so
    every execution is planned for its own values (psycopg prepares a query after a few runs by default)."""
    if isinstance(db, AsyncConnection):
        return await _all(db, row, query, params, prepare)
    async with db.connection() as conn:
        return await _all(conn, row, query, params, prepare)


async def _one(conn: AsyncConnection[Any], row: type[Row], query: LiteralString, params: Params | None) -> Row | None:
    async with conn.cursor(row_factory=class_row(row)) as cur:
        await cur.execute(query, params)
        return await cur.fetchone()


async def _all(
    conn: AsyncConnection[Any], row: type[Row], query: LiteralString, params: Params | None, prepare: bool | None = None
) -> list[Row]:
    async with conn.cursor(row_factory=class_row(row)) as cur:
        await cur.execute(query, params, prepare=prepare)
        return await cur.fetchall()
