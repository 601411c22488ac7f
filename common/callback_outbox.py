"""Durable `callback_url` delivery from the Postgres outbox (``common.db.callbacks``).

The row is recorded in the transaction that records the image's outcome, so nothing acknowledged is lost
to a crash or restart. Every process that records callbacks (storage nodes, query services) runs one
:class:`CallbackOutbox`: it delivers due rows at start-up, when woken after a commit, when a retry falls
due, and on a sweep every ``callbacks.sweep_interval_s`` — whoever's rows they are, so a node that never
comes back does not strand its callbacks. Claims use ``FOR UPDATE SKIP LOCKED`` plus a lease longer than
the POST's timeout, so two processes never send the same row at once. Delivery is at least once (a
process dying between the receiver's 2xx and the commit of `delivered` means one more POST, with the same
``X-Minicdn-Delivery`` id); failures back off exponentially until ``callbacks.max_attempts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from common import loops
from common.callbacks import CallbackSender
from common.config import Settings
from common.db import callbacks as db_callbacks
from common.db.rows import Pool
from common.loops import cancel_all

logger = logging.getLogger(__name__)
MAX_IN_FLIGHT = 32  # deliveries at once per process (the sender's connection limit)
PURGE_EVERY_S = 3600.0  # finished rows are deleted by the day: hourly is often enough


class CallbackOutbox:
    def __init__(self, settings: Settings, pool: Pool) -> None:
        self.cfg = settings.callbacks
        self.pool = pool
        self.sender = CallbackSender(settings)
        # A claimed row is not due again before its POST (bounded by timeout_s) and its outcome's commit are done.
        self.lease_s = 2 * self.cfg.timeout_s + 2.0
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._loop_task: asyncio.Task[None] | None = None

    def start(self, *, sweep: bool = True) -> None:
        """Deliver what is due now (rows a restart left behind included), then keep delivering. ``sweep=False``
        (a query-service worker other than the primary): deliver only when woken, after this process's own
        commits and retries; the primary's sweep finds the rest, so N workers do not sweep N times."""
        self._loop_task = asyncio.get_running_loop().create_task(self._run(sweep), name="callback-outbox")

    def wake(self) -> None:
        """A row was just committed (or a retry fell due): look now rather than at the next sweep."""
        self._wake.set()

    async def _run(self, sweep: bool = True) -> None:
        purged_at = -PURGE_EVERY_S
        if not sweep:
            await self._wake.wait()
        while True:
            self._wake.clear()
            try:
                await self.deliver_due()
                if sweep and time.monotonic() - purged_at >= PURGE_EVERY_S:
                    await db_callbacks.purge_finished(self.pool, self.cfg.keep_days * 86400.0)
                    purged_at = time.monotonic()
            except Exception as exc:  # Postgres away: the rows wait there, the next round tries again
                loops.raise_if_cancelling()
                logger.warning("callback sweep failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.cfg.sweep_interval_s if sweep else None)
            loops.raise_if_cancelling()  # wait_for may have turned a cancellation into that timeout

    async def deliver_due(self) -> int:
        """Claim due rows (as many as there is room for) and start delivering them; returns how many."""
        rows = await db_callbacks.claim(self.pool, MAX_IN_FLIGHT - len(self._in_flight), self.lease_s)
        for row in rows:
            task = asyncio.get_running_loop().create_task(self._deliver(row), name="callback")
            self._in_flight.add(task)
            task.add_done_callback(self._delivery_done)
        return len(rows)

    def _delivery_done(self, task: asyncio.Task[None]) -> None:
        if len(self._in_flight) == MAX_IN_FLIGHT:
            self.wake()  # there is room again: due rows may have been left unclaimed
        self._in_flight.discard(task)

    async def _deliver(self, row: db_callbacks.ClaimedRow) -> None:
        delivery_id = row["delivery_id"]
        try:
            outcome = await self.sender.post(row["url"], row["body"], str(delivery_id))
            if outcome.delivered:
                await db_callbacks.delivered(self.pool, delivery_id)
            elif outcome.refused or row["attempts"] >= self.cfg.max_attempts:
                await db_callbacks.failed(self.pool, delivery_id, outcome.error, None)
                logger.warning(
                    "callback %s for %s given up after %d attempts: %s",
                    delivery_id,
                    row["image_id"],
                    row["attempts"],
                    outcome.error,
                )
            else:
                delay = self.cfg.backoff_s * 2 ** (row["attempts"] - 1)
                await db_callbacks.failed(self.pool, delivery_id, outcome.error, delay)
                self._retry_after(delay)
        except Exception:  # e.g. Postgres away: the lease runs out and the row is claimed again
            logger.exception("callback %s: attempt or its record failed", delivery_id)

    def _retry_after(self, delay_s: float) -> None:
        def fire() -> None:
            self._timers.discard(handle)
            self.wake()

        handle = asyncio.get_running_loop().call_later(delay_s, fire)
        self._timers.add(handle)

    async def wait_idle(self) -> None:
        """Tests: wait until no delivery is in flight."""
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def close(self) -> None:
        """Stop delivering; rows in flight keep their lease and are retried by whoever claims them next."""
        for handle in self._timers:
            handle.cancel()
        await cancel_all([self._loop_task, *self._in_flight])
        await self.sender.close()
