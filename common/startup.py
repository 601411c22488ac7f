"""Setting a service's app up beside a Postgres that is down or restarting.

A process's start-up reads and writes Postgres (migrations, a node's registration, the node registry...). When
Postgres stops answering meanwhile (a restart of it, a failover), the start-up is begun again on a fresh app
instead of exiting, for up to ``database.startup_wait_s``: a supervisor restarting both at once, or a worker
started while the database restarts, does not turn a database blip into a service that is down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import psycopg
from aiohttp import web

logger = logging.getLogger(__name__)
RETRY_S = 1.0


async def set_up(make_runner: Callable[[], web.AppRunner], wait_s: float, stop: asyncio.Event) -> web.AppRunner | None:
    """``runner.setup()`` of the runner ``make_runner`` makes (a fresh app each time), again every ``RETRY_S``
    while it fails because Postgres does not answer, until ``wait_s`` have passed (then the error is raised).
    None when ``stop`` is set meanwhile (nothing is left set up)."""
    deadline = time.monotonic() + wait_s
    while True:
        runner = make_runner()
        try:
            await runner.setup()
            return runner
        except psycopg.OperationalError as exc:
            await runner.cleanup()
            if time.monotonic() + RETRY_S > deadline:
                raise
            logger.warning("Postgres did not answer during start-up (%s): starting again in %.0f s", exc, RETRY_S)
        try:
            await asyncio.wait_for(stop.wait(), RETRY_S)
            return None
        except TimeoutError:
            pass
