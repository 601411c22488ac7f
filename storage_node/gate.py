"""Which images a node may serve: only `ready` ones (not uploaded-but-unchecked, quarantined or rejected).

The answer is Postgres's, cached in memory: `ready` is kept (until the image is deleted, which removes
its files anyway), anything else is asked again after ``recheck_s``, so a quarantined image that an
operator approves is served within that time. The hot path (a cached `ready` image) touches no database.
A deleted or rejected image is refused from its set's event on (``gone``), before its files are removed.

`ready` is also noted on disk (``Store.mark_ready``), so that a process of this node that has not asked
yet -- another serving worker -- serves the image while Postgres is down. A marker written since this
process started is trusted; an older one only once the node has checked every marker against Postgres since
the node started (``storage_node.ready_marks``): a node that was down may have missed a delete or a
rejection.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from common.db import pipeline as db_pipeline
from common.db.rows import Pool
from common.errors import Conflict, NotFound
from storage_node.objects.store import Store

NOT_YET = ("requested", "uploaded", "processing")


class ServeGate:
    def __init__(self, pool: Pool, store: Store, recheck_s: float = 1.0, max_entries: int = 100_000) -> None:
        self.pool = pool
        self.store = store
        self.started_at = time.time()  # ready markers older than this are not trusted (see above)...
        self._marks_trusted = False  # ...until the node has checked them all since it started
        self.recheck_s = recheck_s
        self.max_entries = max_entries
        self._ready: OrderedDict[str, None] = OrderedDict()
        self._other: dict[str, tuple[str | None, float]] = {}
        self._gone: OrderedDict[str, None] = OrderedDict()  # deleted or rejected (``gone``): never served again

    async def check(self, image_id: str) -> None:
        """Return when ``image_id`` may be served; 409 not_ready while it is being processed, 404 otherwise."""
        if image_id in self._ready:
            self._ready.move_to_end(image_id)
            return
        if image_id in self._gone:
            raise NotFound("no such image")
        status, checked = self._other.get(image_id, (None, 0.0))
        if time.monotonic() - checked > self.recheck_s:
            # Another process of this node may have noted it ready (then Postgres need not be up).
            marked_at = await asyncio.to_thread(self.store.ready_marked_at, image_id)
            if marked_at is not None and (marked_at >= self.started_at or await self._marks_checked()):
                self._remember_ready(image_id)
                return
            status = await db_pipeline.status_of(self.pool, image_id)
            if status == "ready":
                await self.mark_ready(image_id)
                return
            if len(self._other) > self.max_entries:
                self._other.clear()
            self._other[image_id] = (status, time.monotonic())
        if status in NOT_YET:
            raise Conflict(f"image is {status}", code="not_ready")
        raise NotFound("no such image")

    async def _marks_checked(self) -> bool:
        if not self._marks_trusted:
            self._marks_trusted = await asyncio.to_thread(self.store.ready_marks_checked)
        return self._marks_trusted

    async def mark_ready(self, image_id: str) -> None:
        """The image is `ready` (Postgres said so, or this node just made it so): in memory and on disk."""
        await asyncio.to_thread(self.store.mark_ready, image_id)
        self._remember_ready(image_id)

    def _remember_ready(self, image_id: str) -> None:
        if image_id in self._gone:
            return  # a check that began before the image went: it is not remembered ready again
        self._other.pop(image_id, None)
        self._ready[image_id] = None
        if len(self._ready) > self.max_entries:
            self._ready.popitem(last=False)

    def is_ready(self, image_id: str) -> bool:
        """Memory only: whether the image is known `ready` right now (publishing asks this last)."""
        return image_id in self._ready

    def forget(self, image_id: str) -> None:
        self._ready.pop(image_id, None)
        self._other.pop(image_id, None)

    def gone(self, image_id: str) -> None:
        """The image was deleted or rejected (its set's event, ``storage_node.siblings``): refused from now on, by
        memory alone, whatever its files and ready marker still say until they are removed. Final: neither status
        ever turns back into `ready`."""
        self.forget(image_id)
        self._gone[image_id] = None
        if len(self._gone) > self.max_entries:
            self._gone.popitem(last=False)
