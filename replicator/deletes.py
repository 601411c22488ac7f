"""The delete job: remove an image's original and every variant from this node, then clear its outbox row."""

from __future__ import annotations

import asyncio
import logging

from common.db import deletions as db_deletions
from replicator.jobs import ReplicatorContext, image_lock

logger = logging.getLogger(__name__)


async def delete_local(ctx: ReplicatorContext, image_id: str) -> bool:
    """Idempotent; returns True when files were removed here. Serialised with copies of the same image,
    so a copy racing a delete can never leave a file behind."""
    async with image_lock(ctx, image_id):
        existed = await asyncio.to_thread(ctx.store.image_dir(image_id).exists)
        await asyncio.to_thread(ctx.store.remove_image, image_id)
        await db_deletions.mark_done(ctx.pool, image_id, ctx.node_id)
    if existed:
        logger.info("deleted %s from this node", image_id)
    return existed


async def sweep_deletions(ctx: ReplicatorContext) -> int:
    """Catch up on this node's delete rows (an event missed while down, or lost by JetStream)."""
    done = 0
    for image_id in await db_deletions.pending_for_node(ctx.pool, ctx.node_id):
        done += await delete_local(ctx, image_id)
    return done
