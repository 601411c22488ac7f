"""The byte-rate limiter that keeps backfill, repair and scrubbing from starving serving (replicator.ratelimit)."""

from __future__ import annotations

import time

import pytest

from replicator.ratelimit import ByteRate


def test_byte_rate_spaces_work_out() -> None:
    rate = ByteRate(1000)
    assert rate.delay_for(500, now=10.0) == 0.0
    assert rate.delay_for(500, now=10.0) == 0.5  # the first 500 B took half a second of budget
    assert rate.delay_for(1000, now=12.0) == 0.0  # idle time is not saved up beyond now
    assert ByteRate(0).delay_for(10**9, now=0.0) == 0.0


def test_a_burst_is_queued_at_the_rate_and_time_pays_it_off() -> None:
    rate = ByteRate(1000)
    assert [rate.delay_for(100, now=5.0) for _ in range(10)] == pytest.approx([i / 10 for i in range(10)])
    assert rate.delay_for(100, now=5.5) == pytest.approx(0.5)  # the burst is booked until 6.0
    assert rate.delay_for(100, now=7.0) == 0.0


def test_a_refund_frees_booked_time_but_never_time_already_past() -> None:
    rate = ByteRate(1000)
    assert rate.delay_for(1000, now=0.0) == 0.0
    assert rate.delay_for(1000, now=0.0) == 1.0  # booked until 2.0
    rate.refund(1000, now=0.0)  # the second 1000 B went elsewhere
    assert rate.delay_for(100, now=0.5) == pytest.approx(0.5)
    rate.refund(10_000, now=1.2)
    assert rate.delay_for(100, now=1.2) == 0.0


async def test_take_sleeps_out_the_delay() -> None:
    rate = ByteRate(10_000)
    started = time.monotonic()
    await rate.take(1000)  # within budget
    await rate.take(1000)  # waits until the first 1000 B have had their 0.1 s
    assert time.monotonic() - started >= 0.09
