"""API keys and the apps that own them: keys stored as SHA-256 hashes, looked up by hash, with scopes
(`app`, `admin`), an optional per-key rate limit, and the app's hotlink allowlist."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import TypedDict

from common.db import audit
from common.db.rows import Pool, fetch_all, fetch_one
from common.errors import InvalidRequest, NotFound

KEY_PREFIX = "mk_"
SCOPES = ("app", "admin")


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    scopes: tuple[str, ...]
    app_id: str = ""
    rate_per_s: float | None = None

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


@dataclass(frozen=True)
class App:
    app_id: str
    name: str
    referers: tuple[str, ...]
    allow_empty_referer: bool
    default_image_id: str | None = None  # stands in for the app's missing public images (common.fallback)


class KeyRow(TypedDict):
    key_id: str
    name: str
    scopes: list[str]
    app_id: str
    rate_per_s: float | None


class KeyListRow(TypedDict):
    key_id: str
    name: str
    app_id: str
    scopes: list[str]
    rate_per_s: float | None
    created_at: datetime
    revoked_at: datetime | None


class RevokedRow(TypedDict):
    revoked_at: datetime
    app_id: str


class ImageAppRow(TypedDict):
    app_id: str | None  # NULL for an image requested without a key


class AppRow(TypedDict):
    app_id: str
    name: str
    referers: list[str]
    allow_empty_referer: bool
    default_image_id: str | None


def hash_key(plaintext: str) -> bytes:
    return hashlib.sha256(plaintext.encode()).digest()


def new_plaintext() -> tuple[str, str]:
    """(key_id, plaintext): the id is embedded so a key can be named in logs without revealing it."""
    key_id = secrets.token_hex(4)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(24)}"


async def create_key(
    pool: Pool,
    name: str,
    scopes: tuple[str, ...],
    plaintext: str | None = None,
    *,
    app_id: str | None = None,
    rate_per_s: float | None = None,
    referers: tuple[str, ...] = (),
    actor: ApiKey | None = None,
    client_ip: str | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key (or the given plaintext, used by `minicdn dev` to keep its key across restarts).

    Without ``app_id`` the key starts a new app of the same name (with ``referers`` as its hotlink
    allowlist); with it, the key joins that app (key rotation for an app).
    """
    if not scopes or any(s not in SCOPES for s in scopes):
        raise InvalidRequest(f"scopes must be a non-empty subset of {list(SCOPES)}")
    if plaintext is None:
        key_id, plaintext = new_plaintext()
    else:
        key_id = plaintext.removeprefix(KEY_PREFIX).split("_", 1)[0]
    async with pool.connection() as conn, conn.transaction():
        if app_id is None:
            app_id = key_id
            await conn.execute(
                "INSERT INTO apps (app_id, name, referers) VALUES (%s, %s, %s) ON CONFLICT (app_id) DO NOTHING",
                (app_id, name, list(referers)),
            )
        else:
            cur = await conn.execute("SELECT 1 FROM apps WHERE app_id = %s", (app_id,))
            if await cur.fetchone() is None:
                raise NotFound("no such app")
        cur = await conn.execute(
            "INSERT INTO api_keys (key_id, key_hash, name, scopes, app_id, rate_per_s)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key_id) DO NOTHING RETURNING key_id",
            (key_id, hash_key(plaintext), name, list(scopes), app_id, rate_per_s),
        )
        if await cur.fetchone() is not None:
            await audit.record(
                conn,
                "key.create",
                app_id=actor.app_id if actor else app_id,
                key_id=actor.key_id if actor else None,
                client_ip=client_ip,
                detail={"new_key_id": key_id, "name": name, "scopes": list(scopes), "key_app_id": app_id},
            )
    return ApiKey(key_id, name, scopes, app_id, rate_per_s), plaintext


async def lookup_key(pool: Pool, plaintext: str) -> ApiKey | None:
    found = await keys_by_hash(pool, [hash_key(plaintext)])
    return next(iter(found.values()), None)


class HashedKeyRow(KeyRow):
    key_hash: bytes


async def keys_by_hash(pool: Pool, hashes: list[bytes]) -> dict[bytes, ApiKey]:
    """The live (not revoked) keys among ``hashes``, by hash: a first sight of a key, or a reconcile's batch."""
    rows = await fetch_all(
        pool,
        HashedKeyRow,
        "SELECT key_hash, key_id, name, scopes, app_id, rate_per_s FROM api_keys"
        " WHERE key_hash = ANY(%s) AND revoked_at IS NULL",
        (hashes,),
    )
    return {bytes(row["key_hash"]): _key(row) for row in rows}


def _key(row: KeyRow) -> ApiKey:
    return ApiKey(row["key_id"], row["name"], tuple(row["scopes"]), row["app_id"], row["rate_per_s"])


async def list_keys(pool: Pool) -> list[KeyListRow]:
    return await fetch_all(
        pool,
        KeyListRow,
        "SELECT key_id, name, app_id, scopes, rate_per_s, created_at, revoked_at FROM api_keys"
        " ORDER BY created_at, key_id",
    )


async def revoke_key(pool: Pool, key_id: str, *, actor: ApiKey | None = None, client_ip: str | None = None) -> datetime:
    """Mark a key revoked (idempotent); NotFound for an unknown key id. Returns when it was revoked."""
    async with pool.connection() as conn, conn.transaction():
        row = await fetch_one(
            conn,
            RevokedRow,
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = %s"
            " RETURNING revoked_at, app_id",
            (key_id,),
        )
        if row is None:
            raise NotFound("no such key")
        await audit.record(
            conn,
            "key.revoke",
            app_id=actor.app_id if actor else row["app_id"],
            key_id=actor.key_id if actor else None,
            client_ip=client_ip,
            detail={"revoked_key_id": key_id, "key_app_id": row["app_id"]},
        )
    return row["revoked_at"]


def _app(row: AppRow) -> App:
    return App(row["app_id"], row["name"], tuple(row["referers"]), row["allow_empty_referer"], row["default_image_id"])


async def apps_by_id(pool: Pool, app_ids: list[str]) -> dict[str, App]:
    """The apps among ``app_ids`` (a first sight, or a reconcile's batch); unknown ids are left out."""
    rows = await fetch_all(
        pool,
        AppRow,
        "SELECT app_id, name, referers, allow_empty_referer, default_image_id FROM apps WHERE app_id = ANY(%s)",
        (app_ids,),
    )
    return {row["app_id"]: _app(row) for row in rows}


async def restricted_apps(pool: Pool) -> list[App]:
    """The apps with a hotlink allowlist (few: the storage node keeps them all in memory)."""
    rows = await fetch_all(
        pool,
        AppRow,
        "SELECT app_id, name, referers, allow_empty_referer, default_image_id FROM apps WHERE referers <> '{}'",
    )
    return [_app(row) for row in rows]


async def app_of_image(pool: Pool, image_id: str) -> str | None:
    """The app that owns an image (None for an unknown image, or one requested without a key)."""
    row = await fetch_one(pool, ImageAppRow, "SELECT app_id FROM images WHERE image_id = %s", (image_id,))
    return row["app_id"] if row else None
