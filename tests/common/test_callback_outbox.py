"""The callback outbox on real Postgres: concurrent claimers never send a row twice, retries give up after
``callbacks.max_attempts``, the SSRF policy is not retried, the sweep query is indexed, old rows are purged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

from common.callback_outbox import CallbackOutbox
from common.config import Settings, load_settings
from common.db import callbacks as db_callbacks
from common.db.pool import open_pool
from common.db.rows import Pool
from tests.cluster import TestCluster
from tests.receiver import CallbackReceiver

KEY = b"k" * 24


def settings_for(database_url: str, **callbacks: Any) -> Settings:
    return load_settings(
        env={},
        overrides={
            "database": {"url": database_url},
            "signing": {"keys": {"k1": KEY.decode()}, "active_kid": "k1"},
            "callbacks": {
                "allow_private": True,
                "backoff_s": 0.01,
                "timeout_s": 2.0,
                "sweep_interval_s": 60,
                **callbacks,
            },
        },
    )


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    async with open_pool(settings_for(database_url).database) as p:
        yield p


async def enqueue(pool: Pool, url: str, n: int) -> None:
    async with pool.connection() as conn, conn.transaction():
        for i in range(n):
            row = db_callbacks.EventRow(
                image_id=f"img{i}",
                status="ready",
                reason=None,
                set_id="s",
                callback_url=url,
                duplicate_of=None,
                format=None,
                width=None,
                height=None,
                sha256=None,
                ready_at=None,
            )
            await db_callbacks.enqueue(conn, row)


async def outbox_rows(pool: Pool) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT delivery_id::text AS delivery_id, image_id, state, attempts, last_error"
            " FROM callback_outbox ORDER BY image_id"
        )
        return await cur.fetchall()


async def test_two_processes_never_send_the_same_row(database_url: str, pool: Pool) -> None:
    receiver = await CallbackReceiver({"k1": KEY}, delay_s=0.1).start()  # slow: deliveries overlap
    settings = settings_for(database_url)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(receiver.stop)
        outboxes = []
        for _ in range(2):  # two processes: each its own pool and sender
            own_pool = await stack.enter_async_context(open_pool(settings.database, run_migrations=False))
            outbox = CallbackOutbox(settings, own_pool)
            stack.push_async_callback(outbox.close)
            outboxes.append(outbox)
        await enqueue(pool, receiver.url, 40)
        for _ in range(3):  # both claim at the same moments, again and again
            await asyncio.gather(*(o.deliver_due() for o in outboxes))
        await asyncio.gather(*(o.wait_idle() for o in outboxes))
        assert sum(o.sender.delivered for o in outboxes) == 40 and all(o.sender.delivered for o in outboxes)
    ids = [h.delivery_id for h in receiver.hits]
    assert len(ids) == len(set(ids)) == 40 and all(h.signed for h in receiver.hits)
    assert {(r["state"], r["attempts"]) for r in await outbox_rows(pool)} == {("delivered", 1)}


async def test_retries_back_off_then_give_up(database_url: str, pool: Pool) -> None:
    receiver = await CallbackReceiver({"k1": KEY}, answers=[500] * 10).start()
    outbox = CallbackOutbox(settings_for(database_url, max_attempts=3), pool)
    try:
        await enqueue(pool, receiver.url, 1)
        outbox.start()
        await TestCluster.wait_for(lambda: len(receiver.hits) >= 3, "three attempts", 10)
        await asyncio.sleep(0.3)  # long enough for a fourth attempt that must not come
        await outbox.wait_idle()
    finally:
        await outbox.close()
        await receiver.stop()
    assert len(receiver.hits) == 3 and len({h.delivery_id for h in receiver.hits}) == 1
    [row] = await outbox_rows(pool)
    assert (row["state"], row["attempts"], row["last_error"]) == ("failed", 3, "HTTP 500")


async def test_refused_address_is_not_retried(database_url: str, pool: Pool) -> None:
    receiver = await CallbackReceiver().start()
    outbox = CallbackOutbox(settings_for(database_url, allow_private=False), pool)
    try:
        await enqueue(pool, receiver.url, 1)
        assert await outbox.deliver_due() == 1
        await outbox.wait_idle()
        assert await outbox.deliver_due() == 0
    finally:
        await outbox.close()
        await receiver.stop()
    [row] = await outbox_rows(pool)
    assert receiver.hits == [] and (row["state"], row["attempts"]) == ("failed", 1)
    assert "not a public address" in row["last_error"]


async def test_sweep_is_indexed_and_old_rows_are_purged(pool: Pool) -> None:
    await enqueue(pool, "http://example.com/hook", 3)
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO callback_outbox (delivery_id, image_id, url, body, state, finished_at)"
            " SELECT gen_random_uuid(), 'old' || g, 'http://example.com/hook', '{}', 'delivered',"
            " now() - interval '30 days' FROM generate_series(1, 3000) g"
        )
        await conn.execute("ANALYZE callback_outbox")
        cur = await conn.execute("EXPLAIN " + db_callbacks.CLAIM_SQL, (10.0, 32))
        plan = "\n".join(r["QUERY PLAN"] for r in await cur.fetchall())
    assert "callback_outbox_due" in plan, plan
    assert await db_callbacks.purge_finished(pool, 7 * 86400.0) == 3000
    assert [r["state"] for r in await outbox_rows(pool)] == ["pending"] * 3
