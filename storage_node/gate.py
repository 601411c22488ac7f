"""Which images a node may serve: only `ready` ones (not uploaded-but-unchecked, quarantined or rejected).

The answer is Postgres's, cached in memory: `ready` is kept (until the image is deleted, which removes
its files anyway), anything else is asked again after ``recheck_s``, so a quarantined image that an
operator approves is served within that time. The hot path (a cached `ready` image) touches no database.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from common.db import pipeline as db_pipeline
from common.db.rows import Pool
from common.errors import Conflict, NotFound

NOT_YET = ("requested", "uploaded", "processing")


class ServeGate:
    def __init__(self, pool: Pool, recheck_s: float = 1.0, max_entries: int = 100_000) -> None:
        self.pool = pool
        self.recheck_s = recheck_s
        self.max_entries = max_entries
        self._ready: OrderedDict[str, None] = OrderedDict()
        self._other: dict[str, tuple[str | None, float]] = {}

    async def check(self, image_id: str) -> None:
        """Return when ``image_id`` may be served; 409 not_ready while it is being processed, 404 otherwise."""
        if image_id in self._ready:
            self._ready.move_to_end(image_id)
            return
        status, checked = self._other.get(image_id, (None, 0.0))
        if time.monotonic() - checked > self.recheck_s:
            status = await db_pipeline.status_of(self.pool, image_id)
            if status == "ready":
                self._other.pop(image_id, None)
                self._ready[image_id] = None
                if len(self._ready) > self.max_entries:
                    self._ready.popitem(last=False)
                return
            if len(self._other) > self.max_entries:
                self._other.clear()
            self._other[image_id] = (status, time.monotonic())
        if status in NOT_YET:
            raise Conflict(f"image is {status}", code="not_ready")
        raise NotFound("no such image")

    def forget(self, image_id: str) -> None:
        self._ready.pop(image_id, None)
        self._other.pop(image_id, None)
