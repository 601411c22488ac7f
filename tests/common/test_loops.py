"""Background loops stop on cancel even when a cancellation is swallowed (Python 3.11's wait_for)."""

from __future__ import annotations

import asyncio

import pytest

from common import loops


async def _swallowing(as_error: bool) -> None:
    """What wait_for can do on 3.11: the cancellation turns into a TimeoutError, or into a normal return."""
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        if as_error:
            raise TimeoutError from None


@pytest.mark.parametrize("as_error", [True, False])
async def test_loop_stops_when_its_cancellation_is_swallowed(as_error: bool) -> None:
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            try:
                await _swallowing(as_error)
            except Exception:
                loops.raise_if_cancelling()
            await loops.sleep(0.01)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert rounds == 1  # stopped at once, not after another round


async def test_helpers_do_nothing_outside_a_cancellation() -> None:
    loops.raise_if_cancelling()
    await loops.sleep(0)
