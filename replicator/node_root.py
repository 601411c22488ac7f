"""Composition root of a storage-node process: the node's app, with the replicator and the scrubber running
in-process when ``replicator.enabled`` (the default), sharing the node's pool, bus, store and metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from common.config import Settings
from common.loops import cancel_all
from replicator.consumer import Replicator
from replicator.jobs import ReplicatorContext, Wanted, replicate
from replicator.scrub import Scrubber
from storage_node import keys
from storage_node.app import create_app

REPLICATOR = web.AppKey("replicator", Replicator)
SCRUBBER = web.AppKey("scrubber", Scrubber)


def create_node_app(settings: Settings) -> web.Application:
    app = create_app(settings)
    if settings.replicator.enabled:
        app.cleanup_ctx.append(_in_process_replicator)  # after the node's resources, which it uses
    return app


async def _in_process_replicator(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        ctx = ReplicatorContext(
            settings, app[keys.POOL], app[keys.STORE], session, metrics=app[keys.METRICS].replication
        )
        replicator = app[REPLICATOR] = Replicator(ctx, app[keys.BUS])
        await replicator.start()
        stack.push_async_callback(replicator.stop)

        async def read_repair(image_id: str, sha256: str, size: int, content_type: str) -> None:
            await replicate(ctx, Wanted(image_id, sha256, size, content_type))

        app[keys.READ_REPAIR] = read_repair
        scrub = settings.scrub
        if scrub.bytes_per_s > 0:
            scrubber = app[SCRUBBER] = Scrubber(ctx, scrub.bytes_per_s, scrub.interval_s, app[keys.METRICS])
            stack.push_async_callback(cancel_all, [asyncio.create_task(scrubber.run_forever(), name="scrubber")])
        yield
