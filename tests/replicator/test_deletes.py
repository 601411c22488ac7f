"""The delete job on one node (replicator.deletes): idempotent, and never racing a copy of the same image.
The cluster-wide delete (events, catch-up of a member that was down) is in tests/integration/test_deletes.py."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from common.db import deletions as db_deletions
from common.ids import new_image_id
from replicator.deletes import delete_local, sweep_deletions
from replicator.jobs import ReplicatorContext, image_lock
from storage_node.objects.store import ObjectMeta


@pytest.fixture
def done(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records the outbox rows the job clears instead of updating Postgres."""
    marked: list[str] = []

    async def mark_done(pool: object, image_id: str, node_id: str) -> None:
        marked.append(image_id)

    monkeypatch.setattr(db_deletions, "mark_done", mark_done)
    return marked


def put(ctx: ReplicatorContext) -> str:
    image_id = new_image_id()
    tmp = ctx.store.new_tmp_path()
    tmp.write_bytes(b"bytes")
    ctx.store.commit_original(tmp, image_id, ObjectMeta(hashlib.sha256(b"bytes").hexdigest(), "image/png", 5))
    return image_id


async def test_delete_is_idempotent_and_always_clears_the_row(ctx: ReplicatorContext, done: list[str]) -> None:
    image_id = put(ctx)
    assert await delete_local(ctx, image_id) is True
    assert not ctx.store.image_dir(image_id).exists()
    assert await delete_local(ctx, image_id) is False  # a redelivered event: nothing left, row cleared again
    assert done == [image_id, image_id]


async def test_delete_waits_for_a_copy_in_flight(ctx: ReplicatorContext, done: list[str]) -> None:
    image_id = put(ctx)
    async with image_lock(ctx, image_id):  # a copy of the same image holds the lock
        deleting = asyncio.create_task(delete_local(ctx, image_id))
        await asyncio.sleep(0.05)
        assert not deleting.done() and ctx.store.image_dir(image_id).exists()
    assert await deleting is True and not ctx.store.image_dir(image_id).exists()
    assert ctx.locks == {}


async def test_sweep_deletes_every_pending_row(
    ctx: ReplicatorContext, done: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    here, elsewhere = put(ctx), new_image_id()  # a row whose files this node never held still gets cleared

    async def pending_for_node(pool: object, node_id: str) -> list[str]:
        assert node_id == ctx.node_id
        return [here, elsewhere]

    monkeypatch.setattr(db_deletions, "pending_for_node", pending_for_node)
    assert await sweep_deletions(ctx) == 1
    assert done == [here, elsewhere]
