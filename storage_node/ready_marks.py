"""At a node's start: check every ready marker on its disk against Postgres, so that its processes may serve
the images it held before it stopped while Postgres is down (``storage_node.gate`` trusts an older marker only
once this is done). A marker of an image deleted, rejected or quarantined meanwhile is removed."""

from __future__ import annotations

import asyncio
import logging
import time

from common.db import replicas as db_replicas
from common.db.rows import Pool
from storage_node.integrity import DB_ERRORS
from storage_node.objects.store import Store

logger = logging.getLogger(__name__)
RETRY_S = 2.0  # Postgres unreachable at start-up: the check waits for it (the gate asks Postgres meanwhile)


async def check_ready_marks(pool: Pool, store: Store, node_id: str) -> int:
    """Returns the markers removed; retries until Postgres answers."""
    while True:
        since = time.time()
        try:
            ready: set[str] = set()
            after = ""
            while page := await db_replicas.ready_held(pool, node_id, after):
                ready.update(page)
                after = page[-1]
        except DB_ERRORS as exc:
            logger.warning("checking the ready markers waits for Postgres: %r", exc)
            await asyncio.sleep(RETRY_S)
            continue
        removed = await asyncio.to_thread(store.keep_ready_marks, ready, since)
        logger.info("ready markers checked against Postgres: %d held ready, %d stale removed", len(ready), removed)
        return removed
