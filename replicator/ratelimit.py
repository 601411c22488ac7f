"""A byte-rate limiter for background work (backfill, repair, scrubbing) so it never starves serving."""

from __future__ import annotations

import asyncio
import time


class ByteRate:
    """``await take(n)`` sleeps as long as needed to keep the average at ``bytes_per_s`` (0: no limit)."""

    def __init__(self, bytes_per_s: int) -> None:
        self.bytes_per_s = bytes_per_s
        self._next_free = 0.0

    def delay_for(self, n: int, now: float) -> float:
        """Seconds to wait before ``n`` more bytes fit (and book them). Pure apart from the booking."""
        if self.bytes_per_s <= 0:
            return 0.0
        start = max(self._next_free, now)
        self._next_free = start + n / self.bytes_per_s
        return start - now

    def refund(self, n: int, now: float) -> None:
        """Give back ``n`` booked bytes that will not be moved under this booking (they are booked again by
        the work that moves them), never freeing time already past."""
        if self.bytes_per_s > 0:
            self._next_free = max(now, self._next_free - n / self.bytes_per_s)

    async def take(self, n: int) -> None:
        delay = self.delay_for(n, time.monotonic())
        if delay > 0:
            await asyncio.sleep(delay)
