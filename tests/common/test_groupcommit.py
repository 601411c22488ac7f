"""common.groupcommit: a lone write starts at once, what queues meanwhile shares one write, a failed write fails
its group only."""

from __future__ import annotations

import asyncio

import pytest

from common.groupcommit import GroupCommit


async def settle() -> None:
    """Let the tasks started so far run until they wait."""
    for _ in range(5):
        await asyncio.sleep(0)


class Writes:
    """A write that waits until released, recording each group."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail: set[str] = set()

    async def __call__(self, items: list[str]) -> list[str | Exception]:
        self.groups.append(items)
        await self.release.wait()
        if "boom" in items:
            raise RuntimeError("the transaction failed")
        return [ValueError(f"{x} refused") if x in self.fail else x.upper() for x in items]


async def test_a_lone_write_starts_at_once_and_what_arrives_meanwhile_shares_the_next() -> None:
    writes = Writes()
    commit = GroupCommit(writes, in_flight=1)
    first = asyncio.create_task(commit.submit("a"))
    await settle()
    assert writes.groups == [["a"]]  # no waiting for company
    rest = [asyncio.create_task(commit.submit(x)) for x in "bcd"]
    await settle()
    assert writes.groups == [["a"]]  # one write in flight: the others queue
    writes.release.set()
    assert await asyncio.gather(first, *rest) == ["A", "B", "C", "D"]
    assert writes.groups == [["a"], ["b", "c", "d"]]
    assert (commit.groups, commit.items) == (2, 4)


async def test_groups_are_capped_and_run_up_to_in_flight_at_a_time() -> None:
    writes = Writes()
    commit = GroupCommit(writes, max_items=2, in_flight=2)
    tasks = [asyncio.create_task(commit.submit(x)) for x in "abcdef"]
    await settle()
    assert writes.groups == [["a"], ["b"]]
    writes.release.set()
    await asyncio.gather(*tasks)
    assert sorted(map(len, writes.groups)) == [1, 1, 2, 2]
    assert sorted(x for g in writes.groups for x in g) == list("abcdef")


async def test_an_item_fails_alone_and_a_failed_write_fails_its_group_and_no_other() -> None:
    writes = Writes()
    writes.fail = {"c"}
    commit = GroupCommit(writes, in_flight=1)
    first = asyncio.create_task(commit.submit("a"))
    await settle()
    grouped = [asyncio.create_task(commit.submit(x)) for x in ("b", "c")]
    await settle()
    writes.release.set()
    assert await first == "A"
    assert await grouped[0] == "B"
    with pytest.raises(ValueError, match="c refused"):  # its own refusal, the rest of its group committed
        await grouped[1]
    writes.release.clear()
    blocker = asyncio.create_task(commit.submit("x"))
    await settle()
    doomed = [asyncio.create_task(commit.submit(x)) for x in ("d", "boom")]
    await settle()
    writes.release.set()
    assert await blocker == "X"
    for task in doomed:
        with pytest.raises(RuntimeError, match="transaction failed"):
            await task
    assert await commit.submit("e") == "E"  # the committer carries on
    assert writes.groups[-2:] == [["d", "boom"], ["e"]]
