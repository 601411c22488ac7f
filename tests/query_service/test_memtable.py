"""The in-memory table behind URL lookups: one read per first sight, none after; events applied in place, also to
a row being read; a reconcile that never undoes a newer event; bounded memory; absent rows remembered a while."""

from __future__ import annotations

import asyncio

import pytest

from query_service.memtable import MemTable


class FakeDb:
    """A loader over a dict, counting its reads; ``gate`` (when set) holds reads until the test opens it."""

    def __init__(self, rows: dict[str, int]) -> None:
        self.rows = rows
        self.reads: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.reading = asyncio.Event()
        self.fail: Exception | None = None

    async def load(self, keys: list[str]) -> dict[str, int]:
        self.reads.append(list(keys))
        found = {k: self.rows[k] for k in keys if k in self.rows}  # what the read's snapshot sees
        self.reading.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return found


def table(db: FakeDb, max_entries: int = 100, absent_ttl_s: float = 60.0) -> MemTable[str, int]:
    return MemTable("t", db.load, max_entries, absent_ttl_s)


async def test_a_first_sight_reads_once_for_all_concurrent_callers_then_never_again() -> None:
    db = FakeDb({"a": 1})
    t = table(db)
    db.gate = asyncio.Event()
    waiting = [asyncio.create_task(t.get("a")) for _ in range(5)]
    await db.reading.wait()
    db.gate.set()
    assert await asyncio.gather(*waiting) == [1] * 5
    assert db.reads == [["a"]]
    for _ in range(10):
        assert await t.get("a") == 1
    assert db.reads == [["a"]] and t.loads == 1 and t.hits == 10


async def test_an_unknown_key_is_remembered_absent_until_its_ttl_passed() -> None:
    db = FakeDb({})
    t = table(db, absent_ttl_s=0.2)
    assert await t.get("x") is None
    assert await t.get("x") is None
    assert db.reads == [["x"]]
    await asyncio.sleep(0.25)
    db.rows["x"] = 7
    assert await t.get("x") == 7
    assert len(db.reads) == 2


async def test_memory_is_bounded_least_recently_used_first() -> None:
    db = FakeDb({"a": 1, "b": 2, "c": 3})
    t = table(db, max_entries=2)
    await t.get("a")
    await t.get("b")
    await t.get("a")  # a is now more recent than b
    await t.get("c")
    assert sorted(t.keys()) == ["a", "c"] and len(t) == 2
    assert t.peek("b") is None


async def test_a_failed_read_reaches_every_caller_and_caches_nothing() -> None:
    db = FakeDb({"a": 1})
    db.fail = ConnectionError("postgres is down")
    t = table(db)
    results = await asyncio.gather(t.get("a"), t.get("a"), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert len(db.reads) == 1 and len(t) == 0
    db.fail = None
    assert await t.get("a") == 1  # the next use reads again


async def test_an_event_during_a_first_sight_read_is_applied_to_what_was_read() -> None:
    db = FakeDb({"a": 1})
    t = table(db)
    db.gate = asyncio.Event()
    reading = asyncio.create_task(t.get("a"))
    await db.reading.wait()
    t.apply("a", lambda v: v + 10)  # published after our read saw the old row
    db.gate.set()
    assert await reading == 11
    assert t.peek("a") == 11


async def test_a_drop_during_a_first_sight_read_stores_nothing() -> None:
    db = FakeDb({"a": 1})
    t = table(db)
    db.gate = asyncio.Event()
    reading = asyncio.create_task(t.get("a"))
    await db.reading.wait()
    t.drop("a", absent=True)
    db.gate.set()
    assert await reading is None
    assert t.peek("a") is None
    assert await t.get("a") is None and len(db.reads) == 1  # remembered absent, not read again


async def test_a_change_during_a_first_sight_read_makes_it_read_again() -> None:
    """An app's row changed (committed) while a first sight was reading it: the answer is the new row, not the
    read that began before the change, and not None either (the row still exists)."""
    db = FakeDb({"a": 1})
    t = table(db)
    db.gate = asyncio.Event()
    reading = asyncio.create_task(t.get("a"))
    await db.reading.wait()
    db.rows["a"] = 2
    t.drop("a")
    db.gate.set()
    assert await reading == 2
    assert t.peek("a") == 2 and len(db.reads) == 2


async def test_events_on_rows_not_held_are_ignored() -> None:
    db = FakeDb({"a": 1})
    t = table(db)
    t.apply("a", lambda v: v + 10)
    assert await t.get("a") == 1  # its first sight reads the truth


async def test_a_refresh_stores_changes_drops_vanished_rows_and_never_undoes_a_newer_event() -> None:
    db = FakeDb({"a": 1, "b": 2, "c": 3})
    t = table(db)
    for key in "abc":
        await t.get(key)
    db.rows.update(a=100, b=200)
    del db.rows["c"]
    db.gate = asyncio.Event()
    db.reading.clear()
    refreshing = asyncio.create_task(t.refresh())
    await db.reading.wait()
    t.apply("b", lambda v: v + 1)  # an event lands while the reconcile's read is in flight
    db.gate.set()
    await refreshing
    assert t.peek("a") == 100  # changed in Postgres: repaired
    assert t.peek("b") == 3  # the event (2 + 1) wins over the older read (200)
    assert t.peek("c") is None  # gone from Postgres
    assert await t.get("c") is None
    assert db.reads[-1] == ["a", "b", "c"]


async def test_a_refresh_reads_in_batches_and_a_failed_one_keeps_the_rows() -> None:
    db = FakeDb({str(i): i for i in range(7)})
    t = table(db)
    for i in range(7):
        await t.get(str(i))
    db.reads.clear()
    await t.refresh(batch=3)
    assert [len(r) for r in db.reads] == [3, 3, 1]
    db.fail = ConnectionError("down")
    with pytest.raises(ConnectionError):
        await t.refresh()
    assert [t.peek(str(i)) for i in range(7)] == list(range(7))


async def test_a_row_failing_the_validity_check_counts_as_absent() -> None:
    db = FakeDb({"a": 1, "b": 2})
    t: MemTable[str, int] = MemTable("t", db.load, 10, 60.0, valid=lambda v: v != 2)
    assert await t.get("a") == 1
    assert await t.get("b") is None


async def test_drop_where_forgets_every_matching_row() -> None:
    db = FakeDb({"a": 1, "b": 2, "c": 1})
    t = table(db)
    for key in "abc":
        await t.get(key)
    assert t.drop_where(lambda v: v == 1, absent=True) == 2
    assert t.keys() == ["b"]
    assert await t.get("a") is None and len(db.reads) == 3  # absent now, without a read
