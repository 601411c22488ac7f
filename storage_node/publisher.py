"""Set events published off the request path: an upload's ``201`` waits for durability (file and directory
fsync'd, row committed), never for NATS.

Each publish is a task of its own, bounded by the JetStream publish timeout; at most ``MAX_IN_FLIGHT`` wait at
once (during a NATS outage each one waits out its timeout), and the rest are cancelled when the node stops.
None of this can lose an image: a failed, dropped or cancelled publish is only the fast path missed, and every
member's sweep of its `pending` replica rows copies the image anyway.
"""

from __future__ import annotations

import asyncio
import logging

from common.bus import Bus
from common.events import Event
from common.loops import cancel_all

logger = logging.getLogger(__name__)
# Tasks waiting on NATS at most (an outage at 200 uploads/s with the 5 s publish timeout): past that, a
# publish is skipped, as it would most likely fail too.
MAX_IN_FLIGHT = 1000


class Publisher:
    def __init__(self, bus: Bus, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.bus = bus
        self.max_in_flight = max_in_flight
        self.skipped = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def publish(self, set_id: str, event: Event, image_id: str) -> None:
        """Start publishing ``event`` (the task keeps the caller's request id for the log lines it causes)."""
        if len(self._tasks) >= self.max_in_flight:
            self.skipped += 1
            logger.warning(
                "publish of %s skipped: %d publishes waiting on NATS (the sweep replicates it)",
                image_id,
                len(self._tasks),
            )
            return
        task = asyncio.create_task(self._send(set_id, event, image_id), name=f"publish-{image_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, set_id: str, event: Event, image_id: str) -> None:
        try:
            await self.bus.publish_set_event(set_id, event, image_id)
        except Exception as exc:
            logger.warning("publish of %s failed (the sweep will replicate it): %r", image_id, exc)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        await cancel_all(list(self._tasks))
