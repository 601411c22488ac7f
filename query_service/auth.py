"""API-key authentication: `Authorization: Bearer <key>`, looked up by its SHA-256 in memory, scopes checked,
per-key rate limits applied, and image ownership decided by app.

Keys (hash -> key) and apps (their hotlink allowlist and default image) are ``MemTable``s: a known key or app
costs no Postgres query, a first sight one. A revocation reaches every query-service process at once over
NATS (``KeyRevoked``, handled by ``revoke``) and is remembered, so a read in flight cannot bring the key back;
an app changed by any process is read again on its next use (``AppChanged``); the reconcile
(``query_service.watch``) re-reads both in the background as a safety net, so a lost event is repaired within
``query.reconcile_s``.
"""

from __future__ import annotations

from collections import OrderedDict

from aiohttp import web

from common.db import api_keys as db_keys
from common.db.api_keys import ApiKey, App
from common.db.rows import Pool
from common.errors import Forbidden, TooManyRequests, Unauthorized
from query_service.memtable import MemTable
from query_service.ratelimit import RateLimiter, retry_after_header

MAX_TOKEN_CHARS = 256
KeyTable = MemTable[bytes, ApiKey]
AppTable = MemTable[str, App]


class ApiKeyAuth:
    def __init__(
        self, pool: Pool, limiter: RateLimiter | None = None, *, max_entries: int = 10_000, absent_ttl_s: float = 10.0
    ) -> None:
        self.pool = pool
        self.limiter = limiter
        # Revoked key ids seen (bounded; revocation is for good): a key read while its revocation arrived stays out.
        self._revoked: OrderedDict[str, None] = OrderedDict()
        self._max_revoked = max_entries

        async def load_keys(hashes: list[bytes]) -> dict[bytes, ApiKey]:
            return await db_keys.keys_by_hash(pool, hashes)

        async def load_apps(app_ids: list[str]) -> dict[str, App]:
            return await db_keys.apps_by_id(pool, app_ids)

        self.keys: KeyTable = MemTable(
            "keys", load_keys, max_entries, absent_ttl_s, valid=lambda key: key.key_id not in self._revoked
        )
        self.apps: AppTable = MemTable("apps", load_apps, max_entries, absent_ttl_s)

    async def optional(self, request: web.Request) -> ApiKey | None:
        """The caller's key, None without an Authorization header; 401 for a wrong or revoked key,
        429 when the key is over its rate."""
        header = request.headers.get("Authorization")
        if header is None:
            return None
        key = await self.keys.get(_key_hash(header))
        if key is None:
            raise Unauthorized("unknown or revoked API key")
        self.take(key)
        return key

    def known(self, header: str) -> ApiKey | None:
        """The key of an Authorization header when it is in memory (not revoked), else None (a bad header too):
        no Postgres, no rate taken."""
        try:
            return self.keys.known(_key_hash(header))
        except Unauthorized:
            return None

    def take(self, key: ApiKey) -> None:
        """One request of ``key``'s rate; 429 when it is over."""
        if self.limiter is not None:
            wait_s = self.limiter.take(key.key_id, key.rate_per_s)
            if wait_s > 0:
                raise TooManyRequests(
                    "this API key is over its request rate", headers={"Retry-After": retry_after_header(wait_s)}
                )

    async def required(self, request: web.Request, scope: str = "app") -> ApiKey:
        key = await self.optional(request)
        if key is None:
            raise Unauthorized("an API key is required")
        if scope not in key.scopes and not (scope == "app" and key.is_admin):
            raise Forbidden(f"this needs an API key with {scope} scope")
        return key

    def revoke(self, key_id: str) -> None:
        """Refuse ``key_id`` from now on (this process revoked it, or a ``KeyRevoked`` event said so)."""
        self._revoked[key_id] = None
        self._revoked.move_to_end(key_id)
        while len(self._revoked) > self._max_revoked:
            self._revoked.popitem(last=False)
        self.keys.drop_where(lambda key: key.key_id == key_id, absent=True)

    async def app(self, app_id: str | None) -> App | None:
        """An app's row (hotlink allowlist, default image): from memory once seen."""
        return None if app_id is None else await self.apps.get(app_id)

    def app_changed(self, app_id: str) -> None:
        """An app's row changed (here, or an ``AppChanged`` event): its next use reads it again. The change was
        just committed, so Postgres answers that read."""
        self.apps.drop(app_id)

    async def reconcile(self) -> None:
        await self.keys.refresh()
        await self.apps.refresh()


def owns(key: ApiKey | None, owner_key_id: str | None, app_id: str | None) -> bool:
    """True when ``key`` belongs to the app that owns an image (``owner_key_id`` requested it, for ``app_id``)."""
    if key is None or owner_key_id is None:
        return False
    return key.key_id == owner_key_id or (app_id is not None and key.app_id == app_id)


def may_see(key: ApiKey | None, visibility: str, owner_key_id: str | None, app_id: str | None) -> bool:
    """Public images for everyone; private ones for their app's keys and admin keys."""
    if visibility == "public":
        return True
    return key is not None and (key.is_admin or owns(key, owner_key_id, app_id))


def _key_hash(header: str) -> bytes:
    """The hash of the key in an Authorization header; 401 when the header is not `Bearer <key>`."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
        raise Unauthorized("expected `Authorization: Bearer <api key>`")
    return db_keys.hash_key(token)
