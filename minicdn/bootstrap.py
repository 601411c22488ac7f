"""`minicdn bootstrap-key --config FILE`: the first admin API key of a new deployment, written straight to
Postgres (every other key can then be made through the API with it). Prints the key once; only its
hash is stored."""

from __future__ import annotations

from common.config import Settings, require_common
from common.db.api_keys import create_key
from common.db.pool import open_pool


async def bootstrap_admin_key(settings: Settings, name: str) -> str:
    if not settings.database.url.reveal():
        require_common(settings)  # raises the usual ConfigError naming database.url
    async with open_pool(settings.database) as pool:
        _key, plaintext = await create_key(pool, name, ("app", "admin"))
    return plaintext
