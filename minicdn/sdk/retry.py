"""When and how long to wait before trying a request again: exponential backoff with full jitter on
connection failures, 503 and 429; the server's `Retry-After` wins when it gives one. A refusal (any other
4xx) is never retried: asking again would get the same answer."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` counts the first try. Delays: uniform in [0, min(max_delay, base_delay * 2**n)] (full
    jitter: clients that failed together do not retry together), or `Retry-After` capped at `max_retry_after`."""

    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 10.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("RetryPolicy: attempts >= 1 and non-negative delays")

    def delay(self, retry_number: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            # A little jitter on top (never under the server's figure) so a crowd does not come back at once.
            return min(self.max_retry_after, retry_after) + random.uniform(0, self.base_delay)
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**retry_number))


NO_RETRY = RetryPolicy(attempts=1)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
