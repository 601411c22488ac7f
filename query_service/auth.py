"""API-key authentication: `Authorization: Bearer <key>`, looked up by hash, cached briefly in memory,
scopes checked, per-key rate limits applied, and image ownership decided by app."""

from __future__ import annotations

import time

from aiohttp import web

from common.db.api_keys import ApiKey, App, app_of_key, get_app, lookup_key
from common.db.rows import Pool
from common.errors import Forbidden, TooManyRequests, Unauthorized
from query_service.ratelimit import RateLimiter, retry_after_header

CACHE_TTL_S = 10.0  # how long another instance may still accept a revoked key
MAX_TOKEN_CHARS = 256


class ApiKeyAuth:
    def __init__(self, pool: Pool, limiter: RateLimiter | None = None) -> None:
        self.pool = pool
        self.limiter = limiter
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._apps: dict[str, str | None] = {}  # key id -> app id (never changes once a key exists)
        self._app_rows: dict[str, tuple[float, App | None]] = {}  # app id -> (when read, row)

    async def optional(self, request: web.Request) -> ApiKey | None:
        """The caller's key, None without an Authorization header; 401 for a wrong or revoked key,
        429 when the key is over its rate."""
        header = request.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
            raise Unauthorized("expected `Authorization: Bearer <api key>`")
        now = time.monotonic()
        hit = self._cache.get(token)
        if hit is None or now - hit[0] > CACHE_TTL_S:
            if len(self._cache) > 10_000:
                self._cache.clear()
            hit = (now, await lookup_key(self.pool, token))
            self._cache[token] = hit
        key = hit[1]
        if key is None:
            raise Unauthorized("unknown or revoked API key")
        if self.limiter is not None:
            wait_s = self.limiter.take(key.key_id, key.rate_per_s)
            if wait_s > 0:
                raise TooManyRequests(
                    "this API key is over its request rate", headers={"Retry-After": retry_after_header(wait_s)}
                )
        return key

    async def required(self, request: web.Request, scope: str = "app") -> ApiKey:
        key = await self.optional(request)
        if key is None:
            raise Unauthorized("an API key is required")
        if scope not in key.scopes and not (scope == "app" and key.is_admin):
            raise Forbidden(f"this needs an API key with {scope} scope")
        return key

    def forget(self, key_id: str) -> None:
        """Drop a revoked key from this instance's cache at once."""
        for token, (_at, key) in list(self._cache.items()):
            if key is not None and key.key_id == key_id:
                del self._cache[token]

    async def _app_id_of_key(self, key_id: str) -> str | None:
        if key_id not in self._apps:
            async with self.pool.connection() as conn:
                self._apps[key_id] = await app_of_key(conn, key_id)
        return self._apps[key_id]

    async def app_id_of(self, owner_key_id: str | None) -> str | None:
        """The app owning an image requested by ``owner_key_id`` (cached: a key never changes app)."""
        return None if owner_key_id is None else await self._app_id_of_key(owner_key_id)

    def forget_app(self, app_id: str) -> None:
        """Drop an app's cached row after this instance changed it (others see it within CACHE_TTL_S)."""
        self._app_rows.pop(app_id, None)

    async def app_of_image(self, owner_key_id: str | None) -> App | None:
        """The owning app (its hotlink settings and default image), cached for CACHE_TTL_S."""
        if owner_key_id is None:
            return None
        app_id = await self._app_id_of_key(owner_key_id)
        if app_id is None:
            return None
        now = time.monotonic()
        hit = self._app_rows.get(app_id)
        if hit is None or now - hit[0] > CACHE_TTL_S:
            hit = self._app_rows[app_id] = (now, await get_app(self.pool, app_id))
        return hit[1]

    async def owns(self, key: ApiKey | None, owner_key_id: str | None) -> bool:
        """True when ``key`` belongs to the app that owns an image requested by ``owner_key_id``."""
        if key is None or owner_key_id is None:
            return False
        if key.key_id == owner_key_id:
            return True
        return await self._app_id_of_key(owner_key_id) == key.app_id

    async def may_see(self, key: ApiKey | None, visibility: str, owner_key_id: str | None) -> bool:
        """Public images for everyone; private ones for their app's keys and admin keys."""
        if visibility == "public":
            return True
        return key is not None and (key.is_admin or await self.owns(key, owner_key_id))
