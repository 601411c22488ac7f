"""The dashboard's history: bucketing, the bounded window, gaps for unknown figures, from plain values."""

from __future__ import annotations

import asyncio
import time

import pytest

from query_service.history import SERIES, History, sample, sample_every

T0 = 1_800_000_000.0


def test_samples_within_one_step_make_one_point() -> None:
    history = History(window_s=60, points=6)  # 10 s buckets
    history.record(T0, {"requests_per_s": 2.0, "used_bytes": 100})
    history.record(T0 + 4, {"requests_per_s": 4.0, "used_bytes": 110})
    history.record(T0 + 9.9, {"requests_per_s": 9.0, "used_bytes": 120})
    history.record(T0 + 10, {"requests_per_s": 1.0, "used_bytes": 130})
    doc = history.to_json()
    assert doc["step_s"] == 10
    assert doc["t"] == [T0 + 9.9, T0 + 10]  # each point at its newest sample, so the last point is "now"
    assert doc["series"]["requests_per_s"] == [5.0, 1.0]
    assert doc["series"]["used_bytes"] == [110.0, 130.0]  # rates and sizes: the mean
    assert set(doc["series"]) == set(SERIES)


def test_the_history_keeps_its_window_and_at_most_its_points() -> None:
    history = History(window_s=60, points=6)
    for i in range(1000):  # a sample every second for 1000 s
        history.record(T0 + i, {"uploads_per_s": float(i)})
    doc = history.to_json()
    assert len(history) == len(doc["t"]) <= 6
    assert doc["t"][-1] == T0 + 999
    assert doc["t"][0] >= T0 + 999 - 60
    assert doc["series"]["uploads_per_s"][-1] == pytest.approx(sum(range(990, 1000)) / 10)
    # Dense sampling does not grow it either.
    for i in range(10_000):
        history.record(T0 + 1000 + i / 100, {"uploads_per_s": 1.0})
    assert len(history) <= 6


def test_unknown_figures_are_gaps_not_zeros() -> None:
    history = History(window_s=60, points=6)
    history.record(T0, {"replication_lag_p50_s": None, "pending_replicas": 0})
    history.record(T0 + 10, {"replication_lag_p50_s": 0.5, "pending_replicas": 3})
    history.record(T0 + 12, {"replication_lag_p50_s": None, "pending_replicas": 5})
    series = history.to_json()["series"]
    assert series["replication_lag_p50_s"] == [None, 0.5]  # the None in the second bucket does not dilute it
    assert series["pending_replicas"] == [0.0, 5.0]  # the backlog's peak in a bucket, not its mean
    assert series["bytes_per_s"] == [None, None]


def test_a_clock_stepped_back_starts_a_new_point() -> None:
    history = History(window_s=60, points=6)
    history.record(T0, {"used_bytes": 1})
    history.record(T0 - 5, {"used_bytes": 2})
    assert history.to_json()["series"]["used_bytes"] == [1.0, 2.0]


def test_a_history_needs_a_window_and_two_points() -> None:
    with pytest.raises(ValueError):
        History(window_s=0, points=10)
    with pytest.raises(ValueError):
        History(window_s=60, points=1)


def test_a_sample_reads_the_charted_summary_figures() -> None:
    summary = {"requests_per_s": 1.5, "used_bytes": 42, "replication_lag_p50_s": None, "nodes": 3}
    values = sample(summary)
    assert values["requests_per_s"] == 1.5 and values["used_bytes"] == 42.0
    assert values["replication_lag_p50_s"] is None and values["oldest_pending_s"] is None
    assert "nodes" not in values


async def test_sampling_skips_until_figures_exist() -> None:
    history = History(window_s=60, points=60_000)  # 1 ms buckets: every sample taken is a point of its own
    calls: list[float] = []
    enough = asyncio.Event()

    def summary() -> dict[str, float] | None:
        calls.append(time.time())
        if len(calls) >= 6:
            enough.set()
        return None if len(calls) < 3 else {"used_bytes": 7.0}

    task = asyncio.create_task(sample_every(history, summary, 0.002))
    try:
        await asyncio.wait_for(enough.wait(), timeout=5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(history) == len(calls) - 2  # nothing recorded for the two calls without figures
    assert all(v == 7.0 for v in history.to_json()["series"]["used_bytes"])


def test_the_backlog_and_worst_lag_keep_their_peak() -> None:
    history = History(window_s=60, points=2)  # 30 s buckets
    for i, (pending, worst, median) in enumerate([(0, 0.1, 0.1), (40, 9.0, 0.3), (2, 0.2, 0.2)]):
        history.record(
            T0 + i, {"pending_replicas": pending, "replication_lag_max_s": worst, "replication_lag_p50_s": median}
        )
    series = history.to_json()["series"]
    assert series["pending_replicas"] == [40.0]
    assert series["replication_lag_max_s"] == [9.0]
    assert series["replication_lag_p50_s"] == [0.2]


async def test_a_failing_sample_does_not_stop_the_sampling() -> None:
    history = History(window_s=60, points=60_000)
    calls: list[int] = []
    enough = asyncio.Event()

    def summary() -> dict[str, float]:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("a figure missing for a moment")
        if len(calls) >= 4:
            enough.set()
        return {"used_bytes": 1.0}

    task = asyncio.create_task(sample_every(history, summary, 0.002))
    try:
        await asyncio.wait_for(enough.wait(), timeout=5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(history) == len(calls) - 1
