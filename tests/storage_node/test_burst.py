"""The burst gate: processing waits while uploads arrive at ``rate`` a second or faster, until they stop or
for at most ``max_wait_s``; below that rate, or turned off, it never waits. The waits asserted are
behaviour (done or not yet done), with margins far from the settings, not speed."""

from __future__ import annotations

import asyncio
import time

from storage_node.burst import WINDOW_S, BurstGate


async def arrivals(gate: BurstGate, n: int, every_s: float) -> None:
    for _ in range(n):
        gate.arrived()
        await asyncio.sleep(every_s)


async def test_below_the_rate_processing_never_waits() -> None:
    gate = BurstGate(rate=5, max_wait_s=30)
    for _ in range(4):
        gate.arrived()
    await asyncio.wait_for(gate.wait(time.monotonic()), 5)  # 4 in the window: not a burst


async def test_a_burst_holds_processing_until_it_has_passed() -> None:
    gate = BurstGate(rate=5, max_wait_s=30)
    since = time.monotonic()
    for _ in range(5):
        gate.arrived()
    waiting = asyncio.create_task(gate.wait(since))
    await asyncio.sleep(WINDOW_S / 2)
    assert not waiting.done()  # the five are still within the window
    await asyncio.wait_for(waiting, 5)  # they left it: the burst is over, far before max_wait_s
    await asyncio.wait_for(gate.wait(time.monotonic()), 5)  # and the next upload is processed at once


async def test_a_burst_that_goes_on_holds_each_upload_for_max_wait_s_at_most() -> None:
    gate = BurstGate(rate=5, max_wait_s=1.5)
    feeding = asyncio.create_task(arrivals(gate, 10_000, 0.01))  # 100 a second, for as long as the test runs
    try:
        await asyncio.sleep(0.2)
        since = time.monotonic()
        waiting = asyncio.create_task(gate.wait(since))
        await asyncio.sleep(0.5)
        assert not waiting.done()  # the burst goes on
        await asyncio.wait_for(waiting, 10)  # released by its bound, while uploads still arrive
        assert time.monotonic() - since >= 1.4  # (a timer may fire a hair early)
        assert not feeding.done()
    finally:
        feeding.cancel()
        gate.stop()


async def test_turned_off_it_never_waits() -> None:
    for gate in (BurstGate(rate=0, max_wait_s=30), BurstGate(rate=5, max_wait_s=0)):
        for _ in range(100):
            gate.arrived()
        await asyncio.wait_for(gate.wait(time.monotonic()), 5)
