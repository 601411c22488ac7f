"""The lifecycle sweep: tickets not used before their upload URL expired become `expired` (with their callback),
and `expired` and `rejected` rows are removed ``lifecycle.retention_s`` after they ended.

Every query-service instance runs it every ``lifecycle.sweep_interval_s`` (no leader needed: each statement
takes a bounded batch with SKIP LOCKED and moves only rows still in the status it expects, so concurrent or
repeated sweeps are harmless), so nothing stays `requested` longer than its expiry plus one interval while
any query service runs. A ticket reserves no bytes on a node (placement only checks a node's free space when
it issues one), so ending or removing one frees its row and nothing else is owed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from common import loops
from common.callback_outbox import CallbackOutbox
from common.config import LifecycleSettings
from common.db import lifecycle as db_lifecycle
from common.db.rows import Pool

logger = logging.getLogger(__name__)
MAX_BATCHES = 10  # per kind and pass: a backlog drains over passes instead of holding one pass for long


@dataclass
class SweepResult:
    expired: int = 0
    removed: int = 0


class LifecycleSweeper:
    def __init__(self, settings: LifecycleSettings, pool: Pool, callbacks: CallbackOutbox | None = None) -> None:
        self.cfg = settings
        self.pool = pool
        self.callbacks = callbacks
        self.total = SweepResult()

    async def sweep_once(self) -> SweepResult:
        """One pass: at most ``MAX_BATCHES`` batches of each kind."""
        result = SweepResult()
        for _ in range(MAX_BATCHES):
            rows = await db_lifecycle.expire_due(self.pool, self.cfg.batch_size)
            result.expired += len(rows)
            if self.callbacks is not None and any(r["callback_url"] for r in rows):
                self.callbacks.wake()  # their callbacks committed with them
            if len(rows) < self.cfg.batch_size:
                break
        for _ in range(MAX_BATCHES):
            removed = await db_lifecycle.remove_ended(self.pool, self.cfg.retention_s, self.cfg.batch_size)
            result.removed += len(removed)
            if len(removed) < self.cfg.batch_size:
                break
        if result.expired or result.removed:
            logger.info("lifecycle: %d ticket(s) expired, %d ended image(s) removed", result.expired, result.removed)
        self.total.expired += result.expired
        self.total.removed += result.removed
        return result

    async def run(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except Exception as exc:  # the next pass retries; nothing is half-done (one transaction per batch)
                loops.raise_if_cancelling()
                logger.warning("lifecycle sweep failed: %s", exc)
            await loops.sleep(self.cfg.sweep_interval_s)
