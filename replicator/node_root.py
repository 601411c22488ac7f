"""Composition root of a storage-node process: the node's app, with the replicator and the scrubber running
in-process when ``replicator.enabled`` (the default), sharing the node's pool, bus, store and metrics; the
lock on its data directories, taken before anything else touches them; and how the process serves and stops.

One of ``node.workers`` processes (``role``, ``storage_node.worker_reports.Role``): each serves on the shared port;
the replicator and the scrubber run in the primary only; the lock is their parent's, inherited (``lock_fds``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp import web

from common.config import Settings
from common.fastlane import FastLaneSite
from common.loops import cancel_all
from common.startup import set_up
from replicator.consumer import Replicator
from replicator.jobs import ReplicatorContext, Wanted, replicate
from replicator.scrub import Scrubber
from storage_node import inflight, keys
from storage_node.app import create_app
from storage_node.lane import node_lane
from storage_node.objects import dirlock
from storage_node.worker_reports import Role

REPLICATOR = web.AppKey("replicator", Replicator)
SCRUBBER = web.AppKey("scrubber", Scrubber)
LOCK_FDS: web.AppKey[tuple[int, ...]] = web.AppKey("lock_fds")  # the parent's data-directory lock, inherited
SHUTDOWN_TIMEOUT_S = 10.0  # how long the requests in flight may take to finish once the node stops listening


def create_node_app(settings: Settings, role: Role | None = None, lock_fds: tuple[int, ...] = ()) -> web.Application:
    """The node's app; ``role`` and ``lock_fds`` (the parent's lock, inherited) for one of several processes."""
    app = create_app(settings, role)
    app[LOCK_FDS] = lock_fds
    # First of all: the node's resources empty tmp/ at start-up, which must never happen under a live node.
    app.cleanup_ctx.insert(0, _own_data_dirs)
    if settings.replicator.enabled and app[keys.ROLE].primary:
        app.cleanup_ctx.append(_in_process_replicator)  # after the node's resources, which it uses
    return app


async def _own_data_dirs(app: web.Application) -> AsyncIterator[None]:
    """One node per data directory: raises ``dirlock.DirLocked`` when another one holds it (or, for one of several
    processes, when the inherited descriptors do not hold it: only their parent's workers share the directory)."""
    node = app[keys.SETTINGS].node
    if not app[keys.ROLE].alone:
        # Kept open, not released: an app set up again (``common.startup``) adopts the same descriptors.
        dirlock.adopt(app[LOCK_FDS], node.data_dir, node.cold_dir)
        yield
        return
    lock = dirlock.acquire(node.data_dir, node.cold_dir)
    try:
        yield
    finally:
        lock.release()


async def serve_node(
    settings: Settings,
    role: Role | None = None,
    lock_fds: tuple[int, ...] = (),
    on_ready: Callable[[], None] | None = None,
    **server_kwargs: Any,
) -> None:
    """Serve until SIGINT or SIGTERM, then stop in order: announce that the node is stopping (NATS and Postgres:
    the query services stop handing it out at once), keep accepting for ``node.stop_grace_s`` (clients handed
    its URL just before), stop listening, finish the requests in flight (up to ``SHUTDOWN_TIMEOUT_S``: an
    upload still arriving is read to its end), close. ``server_kwargs`` go to aiohttp's server (the access
    log). One of several processes (``role``) binds with SO_REUSEPORT beside the others (their parent signals them
    all at once: the primary announces, every one keeps accepting, then stops); ``on_ready`` is called once the
    port is bound."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def make_runner() -> web.AppRunner:
        app = create_node_app(settings, role, lock_fds)
        return web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT_S, handler_cancellation=True, **server_kwargs)

    runner = await set_up(make_runner, settings.database.startup_wait_s, stop)
    if runner is None:
        return
    app = runner.app
    try:
        site = node_site(runner, app, settings.node.host, settings.node.port)
        app[keys.SIBLINGS].reporter.serving()  # first: what it reports from now on may have been stored since
        await site.start()
        if on_ready is not None:
            on_ready()
        await stop.wait()
        await app[keys.HEARTBEATS].announce_stopping()  # the primary's (the others never beat)
        app[keys.STATUS].stopping = True  # every process: its answers now close their connections
        await asyncio.sleep(settings.node.stop_grace_s)
        await site.stop()  # no new connection; those open go on, so bodies still arriving are read
        await inflight.wait_idle(app[keys.STATUS], SHUTDOWN_TIMEOUT_S)
    finally:
        await runner.cleanup()  # closes the connections (a response being sent is finished), then the app's


def node_site(runner: web.AppRunner, app: web.Application, host: str, port: int) -> web.TCPSite:
    """The node's listening site (after ``runner.setup()``): with ``node.fast_lane``, cached hits are answered
    before aiohttp (``storage_node.lane``). Beside the node's other processes (SO_REUSEPORT) unless it is alone."""
    reuse_port = not app[keys.ROLE].alone
    if app[keys.SETTINGS].node.fast_lane:
        return FastLaneSite(runner, host, port, node_lane(app), reuse_port=reuse_port)
    return web.TCPSite(runner, host, port, reuse_port=reuse_port)


async def _in_process_replicator(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        ctx = ReplicatorContext(
            settings,
            app[keys.POOL],
            app[keys.STORE],
            session,
            metrics=app[keys.METRICS].replication,
            bus=app[keys.BUS],
            stages=app[keys.METRICS].stages,
        )
        replicator = app[REPLICATOR] = Replicator(ctx, app[keys.BUS])
        await replicator.start()
        stack.push_async_callback(replicator.stop)

        async def read_repair(image_id: str, sha256: str, size: int, content_type: str) -> None:
            await replicate(ctx, Wanted(image_id, sha256, size, content_type))

        app[keys.READ_REPAIR] = read_repair
        scrub = settings.scrub
        if scrub.bytes_per_s > 0:
            scrubber = app[SCRUBBER] = Scrubber(
                ctx, scrub.bytes_per_s, scrub.interval_s, app[keys.METRICS], app[keys.INTEGRITY]
            )
            stack.push_async_callback(cancel_all, [asyncio.create_task(scrubber.run_forever(), name="scrubber")])
        yield
