"""API keys: stored as SHA-256 hashes, looked up by hash, with scopes (`app`, `admin`)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

KEY_PREFIX = "mk_"


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    scopes: tuple[str, ...]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


def hash_key(plaintext: str) -> bytes:
    return hashlib.sha256(plaintext.encode()).digest()


def new_plaintext() -> tuple[str, str]:
    """(key_id, plaintext): the id is embedded so a key can be named in logs without revealing it."""
    key_id = secrets.token_hex(4)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(24)}"


async def create_key(pool: AsyncConnectionPool, name: str, scopes: tuple[str, ...],
                     plaintext: str | None = None) -> tuple[ApiKey, str]:
    """Store a new key (or the given plaintext, used by `minicdn dev` to keep its key across restarts)."""
    if plaintext is None:
        key_id, plaintext = new_plaintext()
    else:
        key_id = plaintext.removeprefix(KEY_PREFIX).split("_", 1)[0]
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO api_keys (key_id, key_hash, name, scopes) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (key_id) DO NOTHING",
            (key_id, hash_key(plaintext), name, list(scopes)),
        )
    return ApiKey(key_id, name, scopes), plaintext


async def lookup_key(pool: AsyncConnectionPool, plaintext: str) -> ApiKey | None:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT key_id, name, scopes FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL",
            (hash_key(plaintext),),
        )
        row = await cur.fetchone()
    return ApiKey(row["key_id"], row["name"], tuple(row["scopes"])) if row else None
