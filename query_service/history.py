"""The dashboard's recent history: a few cluster-wide figures sampled every `query.stats_interval_s` and
kept in memory for `query.history_s`, downsampled as they arrive into at most `query.history_points`
buckets per series, so memory and the JSON stay small whatever the sampling rate. A bucket holds the mean
of the samples that fell in it, except for the backlog and the worst lag, where it holds their maximum (a
spike of waiting copies must not be averaged away).

Each query-service instance keeps its own history: every instance receives all heartbeats and reads the
same Postgres figures, so their histories agree, and none writes to the database for the sake of a chart.
An instance that has just started shows history from its start (a reload of the page keeps it; a restart
of the process does not).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from common import loops

logger = logging.getLogger(__name__)

# The summary figures charted, all read from the dashboard's summary (so they agree with its tiles).
SERIES = (
    "requests_per_s",
    "bytes_per_s",
    "uploads_per_s",
    "replicated_per_s",
    "backfilled_per_s",
    "used_bytes",
    "capacity_bytes",
    "pending_replicas",
    "backfill_replicas",
    "oldest_pending_s",
    "replication_lag_p50_s",
    "replication_lag_max_s",
)
PEAK_SERIES = frozenset({"pending_replicas", "backfill_replicas", "oldest_pending_s", "replication_lag_max_s"})


@dataclass
class _Bucket:
    start: float  # time of its first sample: later samples within one step join it
    last: float  # time of its latest sample: where the point is drawn, so the newest point is "now"
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)

    def add(self, t: float, values: Mapping[str, float | None]) -> None:
        self.last = t
        for name in SERIES:
            value = values.get(name)
            if value is not None:  # an unknown figure (no lag reported yet) leaves a gap, not a zero
                self.sums[name] = self.sums.get(name, 0.0) + float(value)
                self.counts[name] = self.counts.get(name, 0) + 1
                self.peaks[name] = max(self.peaks.get(name, float(value)), float(value))

    def value(self, name: str) -> float | None:
        count = self.counts.get(name, 0)
        if not count:
            return None
        return self.peaks[name] if name in PEAK_SERIES else self.sums[name] / count


class History:
    def __init__(self, window_s: float, points: int) -> None:
        if window_s <= 0 or points < 2:
            raise ValueError("the history needs a positive window and at least two points")
        self.window_s = window_s
        self.points = points
        self.step_s = window_s / points
        self._buckets: deque[_Bucket] = deque()

    def record(self, t: float, values: Mapping[str, float | None]) -> None:
        """Add one sample taken at wall-clock time ``t`` (seconds since the epoch)."""
        last = self._buckets[-1] if self._buckets else None
        # A clock stepped backwards starts a new bucket rather than folding the sample into an old one.
        if last is None or t - last.start >= self.step_s or t < last.last:
            last = _Bucket(t, t)
            self._buckets.append(last)
        last.add(t, values)
        while self._buckets and (t - self._buckets[0].last > self.window_s or len(self._buckets) > self.points):
            self._buckets.popleft()

    def __len__(self) -> int:
        return len(self._buckets)

    def to_json(self) -> dict[str, Any]:
        """`t` (seconds since the epoch) is shared by every series; a series holds null where unknown."""
        return {
            "window_s": self.window_s,
            "step_s": self.step_s,
            "t": [round(b.last, 1) for b in self._buckets],
            "series": {name: [_round(b.value(name)) for b in self._buckets] for name in SERIES},
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def sample(summary: Mapping[str, Any]) -> dict[str, float | None]:
    """The charted figures of one dashboard summary."""
    return {name: None if summary.get(name) is None else float(summary[name]) for name in SERIES}


async def sample_every(history: History, summary: Callable[[], Mapping[str, Any] | None], interval_s: float) -> None:
    """Sample ``summary()`` every ``interval_s``; a None summary (no figures read yet) is skipped, so a start-up
    does not chart a cluster of zero bytes."""
    while True:
        try:
            current = summary()
            if current is not None:
                history.record(time.time(), sample(current))
        except Exception:  # one bad sample must not end the charts for the life of the process
            loops.raise_if_cancelling()
            logger.exception("dashboard history sample failed")
        await loops.sleep(interval_s)
