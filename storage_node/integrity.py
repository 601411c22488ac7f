"""A node's own copies against their record (the SHA-256, size and type Postgres holds since ingest).

- A lost or torn sidecar is restored from the record, never from the bytes (which may be the damaged
  ones). When Postgres cannot be asked, the copy is unverifiable and is not served (``no_good_copy``).
- A copy that fails a check (its size on a serve, its hash on a serve of changed bytes, before a variant
  build, or in a scrub) is never served again: it is marked in memory, its variants (maybe made from the
  bad bytes) are removed, the finding is counted and logged once, and its replica is recorded `corrupt`.
  Repairing it is the replicator's one copy job (``replicator.jobs.replicate``), started by read repair
  on the request's 307 (``storage_node.misses``), by the scrubber, or by the sweep of `corrupt` rows.

No aiohttp here: handlers, the renderer, the processor and the scrubber call it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import psycopg

from common.db import integrity as db_integrity
from common.db import replicas as db_replicas
from common.db.rows import Pool
from common.errors import Unavailable
from storage_node.objects.store import ObjectMeta, SidecarLost, Store
from storage_node.objects.verify import OriginalMismatch

if TYPE_CHECKING:
    from common.metrics import NodeMetrics

logger = logging.getLogger(__name__)
# How long a read waits for Postgres to restore a lost sidecar (or to record a corruption) before it gives
# up: the copy then counts as unavailable, never as good.
RECORD_TIMEOUT_S = 3.0
DB_ERRORS = (psycopg.Error, TimeoutError)  # psycopg_pool's PoolTimeout is a psycopg.OperationalError


def no_good_copy(message: str) -> Unavailable:
    return Unavailable(message, code="no_good_copy", headers={"Retry-After": "1"})


class Integrity:
    def __init__(
        self,
        store: Store,
        pool: Pool,
        node_id: str,
        metrics: NodeMetrics | None = None,
        record_timeout_s: float = RECORD_TIMEOUT_S,
    ) -> None:
        self.store = store
        self.pool = pool
        self.node_id = node_id
        self.metrics = metrics
        self.record_timeout_s = record_timeout_s

    async def meta(self, image_id: str) -> ObjectMeta | None:
        """``Store.meta``, with a lost sidecar first restored from the record (a first read may wait for it).
        Raises Unavailable (``no_good_copy``) when Postgres cannot be asked."""
        try:
            return await asyncio.to_thread(self.store.meta, image_id)
        except SidecarLost:
            pass
        try:
            row = await asyncio.wait_for(db_integrity.record(self.pool, image_id), self.record_timeout_s)
        except DB_ERRORS as exc:
            logger.warning(
                "image %s on node %s: sidecar lost and the record unreachable (%r)", image_id, self.node_id, exc
            )
            raise no_good_copy("this node cannot check its copy against the record right now") from None
        if row is None or row["sha256"] is None or row["bytes"] is None or row["content_type"] is None:
            return None  # no such image (any more): nothing here is servable
        record = ObjectMeta(row["sha256"], row["content_type"], row["bytes"], private=row["visibility"] != "public")
        meta = await asyncio.to_thread(self.store.restore_meta, image_id, record)
        logger.warning("image %s on node %s: lost sidecar restored from the record", image_id, self.node_id)
        return meta

    async def found(self, image_id: str, how: str, mismatch: OriginalMismatch) -> None:
        """This node's copy of ``image_id`` does not match its record (``how``: serve, variant or scrub)."""
        # The damaged file's stamp, so that a copy another process puts in its place is noticed.
        damaged = mismatch.stamp or await asyncio.to_thread(self.store.original_stamp, image_id)
        if not self.store.mark_corrupt(image_id, damaged):
            return  # known already: counted, logged and recorded once
        removed = await asyncio.to_thread(self.store.remove_variants, image_id)
        if self.metrics is not None:
            self.metrics.corruptions.labels(how).inc()
        logger.error(
            "corrupt copy: image %s on node %s, found by %s: %s recorded %s, found %s; %d bytes of variants removed",
            image_id,
            self.node_id,
            how,
            mismatch.what,
            mismatch.expected,
            mismatch.actual,
            removed,
        )
        try:
            await asyncio.wait_for(
                db_replicas.mark_state(self.pool, image_id, self.node_id, "corrupt"), self.record_timeout_s
            )
        except DB_ERRORS as exc:  # it is not served meanwhile; the next request or scrub records it
            logger.warning("image %s on node %s: `corrupt` not recorded yet (%r)", image_id, self.node_id, exc)

    async def refused(self, image_id: str) -> bool:
        """Whether this node's copy is known damaged (and not replaced since by another process): memory, and
        a stat only for a copy known damaged."""
        return self.store.is_corrupt(image_id) and not await asyncio.to_thread(
            self.store.replaced_since_corrupt, image_id
        )

    async def load_known(self) -> int:
        """At start-up: do not serve what Postgres already has `corrupt` here (a restart forgets memory)."""
        ids = await db_integrity.corrupt_on_node(self.pool, self.node_id)
        for image_id in ids:
            self.store.mark_corrupt(image_id)
        return len(ids)
