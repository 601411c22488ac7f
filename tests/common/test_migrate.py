from __future__ import annotations

from common.config import DatabaseSettings, Secret
from common.db.migrate import available, migrate
from common.db.pool import open_pool


async def test_migrations_apply_once(database_url: str) -> None:
    settings = DatabaseSettings(url=Secret(database_url))
    async with open_pool(settings, run_migrations=False) as pool:
        first = await migrate(pool)
        assert first == [v for v, _n, _s in available()]
        assert await migrate(pool) == []
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'replicas_pending'")
            row = await cur.fetchone()
    assert row is not None and "WHERE (state = 'pending'" in row["indexdef"]
