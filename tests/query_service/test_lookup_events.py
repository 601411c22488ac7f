"""Events as published on NATS (their JSON) change a query-service process's memory: locations move only forward,
a new replica is added once, deletes and rejections leave no holder, a revocation keeps a key out even when it
lands while the key is being read."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from common.db import api_keys as db_keys
from common.db.api_keys import ApiKey
from common.events import (
    ImageDeleted,
    ImageProcessed,
    ImageRejected,
    ImageUploaded,
    KeyRevoked,
    ReplicaOk,
)
from query_service.auth import ApiKeyAuth, may_see, owns
from query_service.locations import Location, advance
from query_service.memtable import MemTable
from query_service.watch import Reconciler, handlers

NO_POOL = cast(Any, None)  # the key reads are replaced where a test needs them
REQUESTED = Location("requested", "public", "k1", "app1", None, None, ())


async def _cache_with(loc: Location) -> MemTable[str, Location]:
    async def load(ids: list[str]) -> dict[str, Location]:
        return {i: loc for i in ids}

    cache: MemTable[str, Location] = MemTable("locations", load, 10, 60.0)
    await cache.get("img")
    return cache


async def test_an_image_life_told_by_events_reaches_ready_with_every_holder() -> None:
    cache = await _cache_with(REQUESTED)
    on = handlers(cache, ApiKeyAuth(NO_POOL))
    on["uploaded"](ImageUploaded("img", "set-1", "us-east-1", "ab" * 32, 10, "image/jpeg").to_json())
    on["replica_ok"](ReplicaOk("img", "eu-west-1").to_json())
    on["replica_ok"](ReplicaOk("img", "eu-west-1").to_json())  # twice (a repair): listed once
    on["processed"](ImageProcessed("img", "ready", 640, 480).to_json())
    on["replica_ok"](ReplicaOk("img", "ap-southeast-1").to_json())
    assert cache.peek("img") == Location(
        "ready", "public", "k1", "app1", 640, 480, ("us-east-1", "eu-west-1", "ap-southeast-1")
    )
    on["uploaded"](ImageUploaded("img", "set-1", "us-east-1", "ab" * 32, 10, "image/jpeg").to_json())  # late
    loc = cache.peek("img")
    assert loc is not None and loc.status == "ready"  # a late event does not move it back


@pytest.mark.parametrize("event", [ImageDeleted("img", "set-1"), ImageRejected("img", "set-1", "bad")])
async def test_a_deleted_or_rejected_image_has_no_holder_and_gets_none_back(event: Any) -> None:
    cache = await _cache_with(Location("ready", "public", "k1", "app1", 10, 10, ("us-east-1",)))
    on = handlers(cache, ApiKeyAuth(NO_POOL))
    on[event.name](event.to_json())
    on["replica_ok"](ReplicaOk("img", "eu-west-1").to_json())  # a copy finishing after the delete
    loc = cache.peek("img")
    assert loc is not None and loc.ok_nodes == () and loc.status == event.name


def test_status_only_moves_forward_and_an_approval_releases() -> None:
    assert advance("processing", "uploaded") == "processing"
    assert advance("quarantined", "ready") == "ready"
    assert advance("deleted", "ready") == "deleted"
    assert advance("ready", "rejected") == "rejected"


def test_ownership_and_visibility_come_from_the_image_row() -> None:
    admin = ApiKey("a0", "ops", ("app", "admin"), "ops")
    mine = ApiKey("k2", "rotated", ("app",), "app1")  # another key of the owning app
    other = ApiKey("k3", "other", ("app",), "app2")
    assert owns(mine, "k1", "app1") and not owns(other, "k1", "app1") and not owns(None, "k1", "app1")
    assert may_see(None, "public", "k1", "app1")
    assert may_see(mine, "private", "k1", "app1") and may_see(admin, "private", "k1", "app1")
    assert not may_see(other, "private", "k1", "app1") and not may_see(None, "private", "k1", "app1")


async def test_a_revocation_landing_during_the_key_read_keeps_the_key_out(monkeypatch: pytest.MonkeyPatch) -> None:
    key = ApiKey("k1", "tests", ("app",), "app1")
    reading, release = asyncio.Event(), asyncio.Event()
    reads = 0

    async def keys_by_hash(pool: object, hashes: list[bytes]) -> dict[bytes, ApiKey]:
        nonlocal reads
        reads += 1
        reading.set()
        await release.wait()
        return dict.fromkeys(hashes, key)  # read before the revocation committed: still live

    monkeypatch.setattr(db_keys, "keys_by_hash", keys_by_hash)
    auth = ApiKeyAuth(NO_POOL)
    token_hash = db_keys.hash_key("mk_k1_secret")
    first = asyncio.create_task(auth.keys.get(token_hash))
    await reading.wait()
    handlers(await _cache_with(REQUESTED), auth)["key_revoked"](KeyRevoked("k1").to_json())
    release.set()
    assert await first is None
    assert await auth.keys.get(token_hash) is None and reads == 1  # remembered, not read again


async def test_a_revocation_drops_a_known_key(monkeypatch: pytest.MonkeyPatch) -> None:
    async def keys_by_hash(pool: object, hashes: list[bytes]) -> dict[bytes, ApiKey]:
        return dict.fromkeys(hashes, ApiKey("k1", "tests", ("app",), "app1"))

    monkeypatch.setattr(db_keys, "keys_by_hash", keys_by_hash)
    auth = ApiKeyAuth(NO_POOL)
    token_hash = db_keys.hash_key("mk_k1_secret")
    assert await auth.keys.get(token_hash) is not None
    auth.revoke("k1")
    assert auth.keys.peek(token_hash) is None
    assert await auth.keys.get(token_hash) is None


async def test_the_reconcile_passes_over_the_locations_a_slice_per_tick_and_repairs_them() -> None:
    truth = {f"img{i}": REQUESTED for i in range(12)}
    reads: list[int] = []

    async def load(ids: list[str]) -> dict[str, Location]:
        reads.append(len(ids))
        return {i: truth[i] for i in ids if i in truth}

    cache: MemTable[str, Location] = MemTable("locations", load, 100, 60.0)
    for image_id in list(truth):
        await cache.get(image_id)
    reads.clear()
    ready = Location("ready", "public", "k1", "app1", 10, 10, ("us-east-1",))
    truth.update(dict.fromkeys(truth, ready))  # changed in Postgres without an event reaching this process
    reconciler = Reconciler(cache, ApiKeyAuth(NO_POOL), interval_s=60, locations_per_tick=5)
    for _ in range(3):
        await reconciler.reconcile_once()
    assert reads == [5, 5, 2] and reconciler.passes == 1
    assert all(cache.peek(i) == ready for i in truth)
    assert reconciler.age_s() < 5
