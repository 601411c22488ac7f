"""How long a failed replication job waits before its next delivery (replicator.outcomes)."""

from __future__ import annotations

from replicator.outcomes import Retry, backoff_s


def test_backoff_follows_the_schedule_then_stays_at_its_cap() -> None:
    assert [backoff_s(attempt) for attempt in range(1, 11)] == [0.5, 1, 2, 5, 10, 30, 60, 60, 60, 60]


def test_backoff_counts_a_nonsense_attempt_as_the_first() -> None:
    # JetStream numbers deliveries from 1; a missing or zero count must not index the schedule from its end.
    assert backoff_s(0) == backoff_s(-5) == 0.5


def test_retry_carries_its_reason_and_delay() -> None:
    exc = Retry("replicate x: peer down", backoff_s(3))
    assert (str(exc), exc.defer_s) == ("replicate x: peer down", 2)
