"""Processing steps aside while a burst of uploads arrives: the node's CPU goes to acknowledging them and to
replication first, and their processing drains once the burst has passed, each upload waiting at most a
bounded time.

A burst is ``rate`` or more uploads arriving within the last second. Below that, the node processes each
upload as soon as it arrives (the usual traffic: an upload is `ready` in well under a second); at that rate
or above, the node is taking more than processing keeps up with, the backlog grows either way, and
processing's CPU (the sandbox's libvips work, its statements in Postgres, its event-loop work here) would
only slow the 201s and the replicas' copies down. The wait is bounded (``max_wait_s`` after an upload
arrived), so a burst that never ends still has its uploads processed, in arrival order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time

WINDOW_S = 1.0  # the arrival rate is counted over this


class BurstGate:
    def __init__(self, rate: int, max_wait_s: float) -> None:
        self.rate, self.max_wait_s = rate, max_wait_s
        self._arrivals: collections.deque[float] = collections.deque()
        self._calm = asyncio.Event()
        self._calm.set()
        self._watch: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.rate > 0 and self.max_wait_s > 0

    def arrived(self) -> None:
        """An upload arrived (its 201 is out): counts towards the rate."""
        if not self.enabled:
            return
        now = time.monotonic()
        self._arrivals.append(now)
        if self._calm.is_set() and self._busy(now):
            self._calm.clear()
            self._watch = asyncio.get_running_loop().create_task(self._until_calm(), name="burst-watch")

    async def wait(self, since: float) -> None:
        """While a burst lasts, until ``max_wait_s`` after ``since`` (a ``time.monotonic()``)."""
        if self._calm.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(since + self.max_wait_s - time.monotonic()):
                await self._calm.wait()

    def _busy(self, now: float) -> bool:
        while self._arrivals and self._arrivals[0] < now - WINDOW_S:
            self._arrivals.popleft()
        return len(self._arrivals) >= self.rate

    async def _until_calm(self) -> None:
        while True:
            now = time.monotonic()
            if not self._busy(now):
                break
            # The burst is over at the earliest once the rate-th newest arrival leaves the window.
            await asyncio.sleep(self._arrivals[-self.rate] + WINDOW_S - now)
        self._calm.set()

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
