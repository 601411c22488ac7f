"""How a replication job ends when it does not succeed: retry later, or give up for good."""

from __future__ import annotations

BACKOFF_S = (0.5, 1, 2, 5, 10, 30, 60)


class Retry(Exception):
    """Transient failure (peer down, network): redeliver after ``defer_s``."""

    def __init__(self, reason: str, defer_s: float) -> None:
        super().__init__(reason)
        self.defer_s = defer_s


class Permanent(Exception):
    """The job can never succeed (malformed event, image gone): stop redelivering."""


def backoff_s(attempt: int) -> float:
    """Delay before delivery ``attempt`` (1-based) is retried."""
    return BACKOFF_S[min(max(attempt, 1), len(BACKOFF_S)) - 1]
