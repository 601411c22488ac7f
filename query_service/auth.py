"""API-key authentication: `Authorization: Bearer <key>`, looked up by hash, cached briefly in memory."""

from __future__ import annotations

import time

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from common.db.api_keys import ApiKey, lookup_key
from common.errors import Forbidden, Unauthorized

CACHE_TTL_S = 30.0


class ApiKeyAuth:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    async def optional(self, request: web.Request) -> ApiKey | None:
        """The caller's key, None without an Authorization header; 401 for a wrong or revoked key."""
        header = request.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("expected `Authorization: Bearer <api key>`")
        token = token.strip()
        now = time.monotonic()
        hit = self._cache.get(token)
        if hit is None or now - hit[0] > CACHE_TTL_S:
            if len(self._cache) > 10_000:
                self._cache.clear()
            hit = (now, await lookup_key(self.pool, token))
            self._cache[token] = hit
        if hit[1] is None:
            raise Unauthorized("unknown or revoked API key")
        return hit[1]

    async def required(self, request: web.Request, scope: str = "app") -> ApiKey:
        key = await self.optional(request)
        if key is None:
            raise Unauthorized("an API key is required")
        if scope == "admin" and not key.is_admin:
            raise Forbidden("this needs an API key with admin scope")
        return key
