"""common.grouped: a lone call starts at once, what queues meanwhile shares one call, a failed call fails
its group only."""

from __future__ import annotations

import asyncio

import pytest

from common.grouped import Grouped


async def settle() -> None:
    """Let the tasks started so far run until they wait."""
    for _ in range(5):
        await asyncio.sleep(0)


class Calls:
    """A call that waits until released, recording each group."""

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


async def test_a_lone_call_starts_at_once_and_what_arrives_meanwhile_shares_the_next() -> None:
    calls = Calls()
    grouped = Grouped(calls, in_flight=1)
    first = asyncio.create_task(grouped.submit("a"))
    await settle()
    assert calls.groups == [["a"]]  # no waiting for company
    rest = [asyncio.create_task(grouped.submit(x)) for x in "bcd"]
    await settle()
    assert calls.groups == [["a"]]  # one call in flight: the others queue
    calls.release.set()
    assert await asyncio.gather(first, *rest) == ["A", "B", "C", "D"]
    assert calls.groups == [["a"], ["b", "c", "d"]]
    assert (grouped.groups, grouped.items) == (2, 4)


async def test_groups_are_capped_and_run_up_to_in_flight_at_a_time() -> None:
    calls = Calls()
    grouped = Grouped(calls, max_items=2, in_flight=2)
    tasks = [asyncio.create_task(grouped.submit(x)) for x in "abcdef"]
    await settle()
    assert calls.groups == [["a"], ["b"]]
    calls.release.set()
    await asyncio.gather(*tasks)
    assert sorted(map(len, calls.groups)) == [1, 1, 2, 2]
    assert sorted(x for g in calls.groups for x in g) == list("abcdef")


async def test_an_item_fails_alone_and_a_failed_call_fails_its_group_and_no_other() -> None:
    calls = Calls()
    calls.fail = {"c"}
    grouped = Grouped(calls, in_flight=1)
    first = asyncio.create_task(grouped.submit("a"))
    await settle()
    pair = [asyncio.create_task(grouped.submit(x)) for x in ("b", "c")]
    await settle()
    calls.release.set()
    assert await first == "A"
    assert await pair[0] == "B"
    with pytest.raises(ValueError, match="c refused"):  # its own refusal, the rest of its group done
        await pair[1]
    calls.release.clear()
    blocker = asyncio.create_task(grouped.submit("x"))
    await settle()
    doomed = [asyncio.create_task(grouped.submit(x)) for x in ("d", "boom")]
    await settle()
    calls.release.set()
    assert await blocker == "X"
    for task in doomed:
        with pytest.raises(RuntimeError, match="transaction failed"):
            await task
    assert await grouped.submit("e") == "E"  # it carries on
    assert calls.groups[-2:] == [["d", "boom"], ["e"]]
