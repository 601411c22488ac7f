"""Per-key token buckets (in memory, per query-service instance): `rate` tokens a second up to `burst`.

Pure and clock-injected so it is tested with plain values. A refused call says how long until a token
is there, which becomes the `Retry-After` header of the `429`.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(
        self, rate_per_s: float, burst: int, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._max_keys = max_keys

    def take(self, key: str, rate_per_s: float | None = None) -> float:
        """Take one token for ``key``: 0.0 when allowed, else the seconds to wait (> 0).

        ``rate_per_s`` overrides the default rate for this key; a rate of 0 means unlimited.
        """
        rate = self.rate_per_s if rate_per_s is None else rate_per_s
        if rate <= 0:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate


def retry_after_header(wait_s: float) -> str:
    """Whole seconds, at least 1 (Retry-After takes an integer)."""
    return str(max(1, math.ceil(wait_s)))
