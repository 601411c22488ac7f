"""Background loops that must outlive errors yet stop when cancelled, and stopping background tasks.

Python 3.11's ``asyncio.wait_for`` (used inside nats-py and psycopg_pool) can swallow a cancellation
that arrives just as the awaited operation finishes or times out, handing the caller a result or a
TimeoutError instead. A loop that logs errors and carries on would then never stop, and the app's
shutdown would wait for it forever. The task still counts the cancellation request, so a loop asks
after each caught error whether it is being cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any


def raise_if_cancelling() -> None:
    """Call in an ``except Exception`` branch of a long-running loop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def sleep(seconds: float) -> None:
    """``asyncio.sleep`` for such loops: stops first if a cancellation was swallowed since the last pause
    (a swallowed cancellation is not delivered again, so the loop has to look)."""
    raise_if_cancelling()
    await asyncio.sleep(seconds)


async def cancel_all(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancel every task (None entries are skipped) and wait until each has unwound; their errors are not
    re-raised (they were logged where they happened, and a shutdown must go on)."""
    pending = [t for t in tasks if t is not None]
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
