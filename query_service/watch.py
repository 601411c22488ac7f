"""What keeps a query-service process's in-memory lookups current: the events it receives over NATS, and the
reconcile from Postgres in the background.

Events (core NATS subscriptions; every process gets every event):

| subject | published by | effect here |
|---|---|---|
| `set.*.uploaded` | the origin node, after the upload's commit | image `uploaded`, the origin holds it |
| `image.replica_ok` | a node's replicator, after recording its copy `ok` | one more holder, handed out at once |
| `image.processed` | the origin node's processor; an operator's approval | `ready`/`quarantined`, final size |
| `set.*.rejected` | processing, an operator's rejection | `rejected`, no holder |
| `set.*.deleted` | the query service that deleted it | `deleted`, no holder |
| `access.key_revoked` | the query service that revoked it | the key is refused from now on |
| `access.app_changed` | the query service that changed it | the app's row is read again |

An event about an image or key this process does not hold is ignored: its first sight reads Postgres. Core NATS
loses what is published while a process is disconnected; the reconcile every ``query.reconcile_s`` re-reads
every key and app held and the next ``LOCATIONS_PER_TICK`` locations, so a lost event leaves a key stale for
one period at most, a location for one pass (one period up to that many held). While Postgres is down the
reconcile fails and the memory keeps answering; ``minicdn_query_reconcile_age_seconds`` says how old it is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common import loops
from common.bus import Bus
from common.events import (
    AppChanged,
    Event,
    ImageDeleted,
    ImageProcessed,
    ImageRejected,
    ImageUploaded,
    KeyRevoked,
    ReplicaOk,
)
from query_service import locations
from query_service.auth import ApiKeyAuth
from query_service.locations import LocationCache
from query_service.memtable import MemTable

logger = logging.getLogger(__name__)
# Locations re-read per reconcile: 10 short queries; 100,000 held (the default cache) take 20 ticks a pass.
LOCATIONS_PER_TICK = 5000


def handlers(cache: LocationCache, auth: ApiKeyAuth) -> dict[str, Callable[[bytes], None]]:
    """Event name -> what its JSON does to this process's memory (pure dispatch: testable without NATS)."""

    def on(kind: type[Event], act: Callable[[Any], None]) -> tuple[str, Callable[[bytes], None]]:
        return kind.name, lambda data: act(kind.from_json(data))

    return dict(
        [
            on(ImageUploaded, lambda e: cache.apply(e.image_id, locations.uploaded(e.origin_node))),
            on(ReplicaOk, lambda e: cache.apply(e.image_id, locations.replica_ok(e.node_id))),
            on(ImageProcessed, lambda e: cache.apply(e.image_id, locations.processed(e.status, e.width, e.height))),
            on(ImageRejected, lambda e: cache.apply(e.image_id, locations.gone("rejected"))),
            on(ImageDeleted, lambda e: cache.apply(e.image_id, locations.gone("deleted"))),
            on(KeyRevoked, lambda e: auth.revoke(e.key_id)),
            on(AppChanged, lambda e: auth.app_changed(e.app_id)),
        ]
    )


async def subscribe(bus: Bus, cache: LocationCache, auth: ApiKeyAuth) -> list[Subscription]:
    """Subscribe to every event above (awaited before the process serves: none is missed after start-up)."""
    by_name = handlers(cache, auth)

    async def on_msg(msg: Msg) -> None:
        name = msg.subject.rsplit(".", 1)[-1]
        handle = by_name.get(name)
        if handle is None:
            return  # another event on the same subjects: not one the lookups need
        try:
            handle(msg.data)
        except (ValueError, TypeError) as exc:
            logger.warning("bad %s event: %s", name, exc)

    subjects = bus.subjects
    names = (ImageUploaded.name, ImageRejected.name, ImageDeleted.name)
    wanted = [*(subjects.set_events_named(name) for name in names), subjects.image_events(), subjects.access_events()]
    return [await bus.nc.subscribe(subject, cb=on_msg) for subject in wanted]


async def unsubscribe(subs: list[Subscription]) -> None:
    for sub in subs:
        await sub.unsubscribe()


class Reconciler:
    """Every ``interval_s``: re-reads every key and app held, and the next ``locations_per_tick`` locations (a pass
    over all of them spans several ticks when many are held, so a big cache costs Postgres a few short queries
    per tick, not hundreds). Counts how long ago a tick last worked."""

    def __init__(
        self, cache: LocationCache, auth: ApiKeyAuth, interval_s: float, locations_per_tick: int = LOCATIONS_PER_TICK
    ) -> None:
        self.cache = cache
        self.auth = auth
        self.interval_s = interval_s
        self.locations_per_tick = locations_per_tick
        self.succeeded_at = time.monotonic()  # what was read at start-up (first sights) is fresh then
        self.failures = 0
        self.passes = 0  # complete passes over the locations
        self._due: list[str] = []  # the rest of the current pass

    def age_s(self) -> float:
        return time.monotonic() - self.succeeded_at

    async def reconcile_once(self) -> None:
        started = time.monotonic()
        await self.auth.reconcile()
        if not self._due:
            self._due = self.cache.keys()
        batch = self._due[: self.locations_per_tick]
        await self.cache.refresh(batch)  # evicted meanwhile: skipped; loaded since: fresh, in the next pass
        del self._due[: len(batch)]
        if not self._due:
            self.passes += 1
        self.succeeded_at = started

    async def run(self) -> None:
        failing = False
        while True:
            await loops.sleep(self.interval_s)
            try:
                await self.reconcile_once()
                if failing:
                    logger.info("reconcile with Postgres works again (memory was %.0f s old)", self.age_s())
                failing = False
            except Exception as exc:  # Postgres away: memory keeps answering, its age shows in the metrics
                loops.raise_if_cancelling()
                self.failures += 1
                if not failing:
                    logger.warning("reconcile with Postgres failed (lookups answer from memory): %r", exc)
                failing = True


class LookupCollector(Collector):
    """/metrics of the in-memory lookups, read at scrape time (the hot path only bumps plain integers)."""

    def __init__(self, tables: list[MemTable[Any, Any]], reconciler: Reconciler) -> None:
        self.tables = tables
        self.reconciler = reconciler

    def collect(self) -> Iterator[Metric]:
        entries = GaugeMetricFamily(
            "minicdn_query_memory_entries", "Rows held in memory for lookups, by table", labels=["table"]
        )
        loads = CounterMetricFamily(
            "minicdn_query_memory_loads", "First-sight reads of Postgres by the in-memory tables", labels=["table"]
        )
        hits = CounterMetricFamily(
            "minicdn_query_memory_hits", "Lookups answered from memory, by table", labels=["table"]
        )
        for table in self.tables:
            entries.add_metric([table.name], len(table))
            loads.add_metric([table.name], table.loads)
            hits.add_metric([table.name], table.hits)
        yield entries
        yield loads
        yield hits
        yield GaugeMetricFamily(
            "minicdn_query_reconcile_age_seconds",
            "Seconds since the in-memory keys, apps and locations were last reconciled with Postgres (grows while "
            "Postgres is down: lookups then answer from memory)",
            value=self.reconciler.age_s(),
        )
        yield CounterMetricFamily(
            "minicdn_query_reconcile_failures",
            "Reconciles with Postgres that failed",
            value=self.reconciler.failures,
        )
