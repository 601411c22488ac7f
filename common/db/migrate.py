"""Apply numbered ``migrations/NNN_*.sql`` files once each, in order, each in its own transaction.

A minimal runner instead of alembic/yoyo: those bring SQLAlchemy or a sync driver for a job that
is 40 lines here. A transaction-level advisory lock makes concurrent start-ups (several nodes at
once) safe: one applies, the others wait and then see the versions recorded.
"""

from __future__ import annotations

import logging
import re
from importlib import resources
from typing import TypedDict

from common.db.rows import Pool, fetch_all

logger = logging.getLogger(__name__)
_MIGRATION_RE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 0x6D696E6963646E  # "minicdn"


class AppliedRow(TypedDict):
    version: int


def available() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) for every migration shipped with the package, in order."""
    folder = resources.files("common.db") / "migrations"
    out = []
    for entry in folder.iterdir():
        m = _MIGRATION_RE.match(entry.name)
        if m:
            out.append((int(m.group(1)), entry.name, entry.read_text()))
    return sorted(out)


async def migrate(pool: Pool) -> list[int]:
    """Apply what is missing; returns the versions applied by this call."""
    applied_now: list[int] = []
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await fetch_all(conn, AppliedRow, "SELECT version FROM schema_migrations")}
        for version, name, sql in available():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
            logger.info("applied migration %s", name)
            applied_now.append(version)
    return applied_now
