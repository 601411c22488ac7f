"""Server-level SQL, outside any minicdn database: creating a database on a fresh server (the embedded
Postgres of `minicdn dev` and the tests). Synchronous: it runs once, before any event loop needs it."""

from __future__ import annotations

import psycopg
from psycopg import sql


def ensure_database(server_url: str, name: str) -> None:
    """Create database ``name`` through ``server_url`` (a connection to another database) unless it exists."""
    # CREATE DATABASE cannot run inside a transaction block: autocommit.
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
