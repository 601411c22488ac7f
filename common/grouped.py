"""Requests to Postgres in groups: the ones that arrive while earlier ones are running go together, one
statement or one transaction for the group instead of one each (group commit, and its read-side twin).

Under a burst a transaction per request costs a pool checkout, a round trip per statement, a commit (a WAL
flush) and the client-side work of each; the requests that queued up meanwhile cost those once per group.
With fewer than ``in_flight`` calls running a call starts at once: a lone request never waits for company.
The call answers each item on its own (a result, or the exception that item raises); a call that raises fails
every item of its group, as each would have failed alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Grouped(Generic[T, R]):
    """``call(items)`` does the work of ``items`` at once (one statement, one transaction) and returns each one's
    result or exception, in order; at most ``in_flight`` calls run at a time, each taking up to ``max_items`` of
    those waiting."""

    def __init__(
        self,
        call: Callable[[list[T]], Awaitable[Sequence[R | Exception]]],
        *,
        max_items: int = 32,
        in_flight: int = 2,
    ) -> None:
        self._call = call
        self.max_items = max_items
        self.in_flight = in_flight
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.groups = 0  # calls done, and the items they held (the mean group: ``items / groups``)
        self.items = 0

    async def submit(self, item: T) -> R:
        """``item``'s result once its group is done; raises what the call said of it."""
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        if self._running < self.in_flight:
            self._start()
        return await done

    def _start(self) -> None:
        group, self._waiting = self._waiting[: self.max_items], self._waiting[self.max_items :]
        self._running += 1
        task = asyncio.get_running_loop().create_task(self._run(group))
        self._tasks.add(task)  # (held until done; its outcome goes to the group's futures)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, group: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            outcomes: Sequence[R | Exception] = await self._call([item for item, _ in group])
            if len(outcomes) != len(group):
                raise RuntimeError(f"a grouped call answered {len(outcomes)} of {len(group)} items")
        except Exception as exc:  # every item of the group learns it
            outcomes = [exc] * len(group)
        except BaseException:  # cancelled: the loop is stopping
            for _, done in group:
                done.cancel()
            raise
        finally:
            self._running -= 1
            if self._waiting and self._running < self.in_flight:
                self._start()
        self.groups += 1
        self.items += len(group)
        for (_, done), outcome in zip(group, outcomes, strict=True):
            if done.done():
                continue
            if isinstance(outcome, Exception):
                done.set_exception(outcome)
            else:
                done.set_result(outcome)
