"""Prometheus metrics of every minicdn process, named by Prometheus conventions.

Base units (`_seconds`, `_bytes`), `_total` for counters, and labels with a small fixed set of values
(route templates, status codes, error codes, node ids): never image ids or paths. Each app gets its own
CollectorRegistry (tests run several apps in one process); the groups below are built on it. Domain
modules receive the metric objects they update, so they stay free of aiohttp.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

T = TypeVar("T")
MAX_CHILDREN = 4096  # cached label children of the request metrics (``HttpMetrics.count_request``)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
BUILD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)
PROCESSING_OUTCOMES = ("ready", "rejected", "quarantined", "failed")
PROVISIONING_KINDS = ("new_set", "replace", "set_closed", "set_opened", "node_state")
# The node's gauges: set by one process (its primary) and never incremented. With several processes writing metrics
# (prometheus_client's multiprocess mode, a node's ``node.workers``), the most recently set value is the node's.
ONE_WRITER: dict[str, Any] = {"multiprocess_mode": "mostrecent"}
CORRUPTION_FOUND_BY = ("serve", "variant", "scrub")  # the checks that find a copy not matching its record
REPAIRED_STATES = ("corrupt", "missing")  # a replica's state before a repair made it `ok` again


class HttpMetrics:
    """Per-app registry with the request metrics every app has (updated by common.httpkit's middleware)."""

    def __init__(self, component: str) -> None:
        self.registry = CollectorRegistry()
        self.component = component
        self.requests = Counter(
            "minicdn_http_requests_total",
            "HTTP requests by route and status",
            ["component", "route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "minicdn_http_request_duration_seconds",
            "HTTP request duration by route",
            ["component", "route"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.response_bytes = Counter(
            "minicdn_http_response_bytes_total",
            "Response body bytes sent, by route (HEAD and 304 send none)",
            ["component", "route"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "minicdn_http_rejections_total",
            "Requests refused with a 4xx error, by API error code",
            ["component", "code"],
            registry=self.registry,
        )
        # Plain totals for the heartbeat (the dashboard's rates), without reading the registry back.
        self.requests_seen = 0
        self.bytes_sent = 0
        self._exposed = self.registry  # what /metrics shows
        # (route, method, status) -> its children: ``labels`` takes a lock and builds a key on every call.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._bytes_children: dict[str, Any] = {}  # route -> its response_bytes child
        self.before_scrape: list[Callable[[], None]] = []  # counts kept back to be added in bulk: added first

    def count_request(self, route: str, method: str, status: int, seconds: float, counted: bool = True) -> None:
        """One request's duration and, unless the caller adds it later (``count_requests``), its count, on the
        children of its labels, made once."""
        children = self._children_of(route, method, status)
        if counted:
            children[0].inc()
        children[1].observe(seconds)

    def count_requests(self, route: str, method: str, status: int, n: int) -> None:
        self._children_of(route, method, status)[0].inc(n)

    def _children_of(self, route: str, method: str, status: int) -> tuple[Any, Any]:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            if len(self._children) >= MAX_CHILDREN:  # methods are the client's: stay bounded whatever they send
                self._children.clear()
            children = self._children[key] = (
                self.requests.labels(self.component, route, method, str(status)),
                self.duration.labels(self.component, route),
            )
        return children

    def expose_processes(self, path: str) -> None:
        """Show on /metrics what every process writing to ``path`` counted (prometheus_client's multiprocess mode,
        which this process runs in): counters and histograms summed, ``ONE_WRITER`` gauges their latest value."""
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]  # (the library's)
        self._exposed = registry

    async def handler(self, request: web.Request) -> web.Response:
        for flush in self.before_scrape:
            flush()
        return web.Response(body=generate_latest(self._exposed), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Count the body about to be sent (Content-Length is known here, also for files and ranges)."""
        self.requests_seen += 1
        size = response.content_length
        if request.method == "HEAD" or not size:
            return
        self.bytes_sent += size
        self.count_bytes(route_of(request), size)

    def count_bytes(self, route: str, size: int) -> None:
        child = self._bytes_children.get(route)
        if child is None:  # routes are the app's templates (and "unmatched"): a few
            child = self._bytes_children[route] = self.response_bytes.labels(self.component, route)
        child.inc(size)

    def install(self, app: web.Application) -> None:
        app.router.add_get("/metrics", self.handler)
        app.on_response_prepare.append(self.on_response_prepare)


def route_of(request: web.Request) -> str:
    """The route template (`/i/{image_id}/{variant}`), never the concrete path: bounded label values."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


class RecentLags:
    """The last few replication lags, for the heartbeat's p50/max (Prometheus has the full histogram)."""

    def __init__(self, size: int = 256) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        self._values.append(value)

    def summary(self) -> tuple[float | None, float | None]:
        if not self._values:
            return None, None
        ordered = sorted(self._values)
        return ordered[len(ordered) // 2], ordered[-1]


@dataclass
class StageMetrics:
    """Where an upload's work goes, stage by stage (``minicdn bench --peers`` prints them per upload): how many
    times a stage ran, its wall seconds, and the CPU seconds of the stages that run on one thread (that
    thread's own clock, user + system: a file's write and fsyncs) or in a sandbox worker (the job's own CPU).
    Stages awaited on the event loop (a transaction, a fetch) have wall time only: their CPU is spread over the
    process, and Postgres's over its own. Names are fixed in code, ``<where>:<what>``."""

    registry: CollectorRegistry
    runs: Counter = field(init=False)
    wall: Counter = field(init=False)
    cpu: Counter = field(init=False)
    _children: dict[str, tuple[Counter, Counter, Counter]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        reg = self.registry
        self.runs = Counter("minicdn_stage_runs_total", "Times a stage of the upload path ran", ["stage"], registry=reg)
        self.wall = Counter("minicdn_stage_seconds_total", "Wall seconds spent in a stage", ["stage"], registry=reg)
        self.cpu = Counter(
            "minicdn_stage_cpu_seconds_total",
            "CPU seconds of a stage that runs on one thread or in a sandbox worker",
            ["stage"],
            registry=reg,
        )

    def add(self, stage: str, wall_s: float, cpu_s: float | None = None) -> None:
        children = self._children.get(stage)
        if children is None:  # (a fixed set of names: the label lookups are made once each)
            children = self._children[stage] = (
                self.runs.labels(stage),
                self.wall.labels(stage),
                self.cpu.labels(stage),
            )
        runs, wall, cpu = children
        runs.inc()
        wall.inc(wall_s)
        if cpu_s is not None:
            cpu.inc(cpu_s)

    def timed(self, stage: str, fn: Callable[[], T]) -> Callable[[], T]:
        """``fn`` (to run on a worker thread), counted as ``stage`` with that thread's CPU time."""

        def run() -> T:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn()
            finally:
                self.add(stage, time.perf_counter() - wall, time.thread_time() - cpu)

        return run

    @contextlib.asynccontextmanager
    async def awaited(self, stage: str) -> AsyncIterator[None]:
        """An awaited stage: wall time only."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - started)


@dataclass
class ReplicationMetrics:
    """Updated by the replicator, wherever it runs (inside the node process or on its own)."""

    registry: CollectorRegistry
    node_id: str
    lag: Histogram = field(init=False)
    copies: Counter = field(init=False)
    backfill_copies: Counter = field(init=False)
    repairs: Counter = field(init=False)
    consumer_pending: Gauge = field(init=False)
    consumer_ack_pending: Gauge = field(init=False)
    recent: RecentLags = field(init=False, default_factory=RecentLags)
    copied: int = field(init=False, default=0)
    backfilled: int = field(init=False, default=0)  # of ``copied``: images uploaded before this node joined

    def __post_init__(self) -> None:
        reg = self.registry
        self.lag = Histogram(
            "minicdn_replication_lag_seconds",
            "Time from an upload's 201 until this node holds a verified replica",
            ["node_id"],
            registry=reg,
            buckets=LAG_BUCKETS,
        )
        self.copies = Counter(
            "minicdn_replication_copies_total", "Replication jobs by outcome", ["node_id", "outcome"], registry=reg
        )
        self.consumer_pending = Gauge(
            "minicdn_jetstream_consumer_pending_messages",
            "Messages in the stream not yet delivered to this durable consumer",
            ["consumer"],
            registry=reg,
            **ONE_WRITER,
        )
        self.consumer_ack_pending = Gauge(
            "minicdn_jetstream_consumer_ack_pending_messages",
            "Messages delivered to this consumer but not acked yet",
            ["consumer"],
            registry=reg,
            **ONE_WRITER,
        )
        self.backfill_copies = Counter(
            "minicdn_replication_backfill_copies_total",
            "Copies of images uploaded before this node joined its set (not in the lag histogram)",
            ["node_id"],
            registry=reg,
        )
        self.repairs = Counter(
            "minicdn_repairs_total",
            "Replicas made `ok` again with verified bytes, by the state they were in (`corrupt`, `missing`)",
            ["node_id", "was"],
            registry=reg,
        )
        for outcome in ("copied", "present", "retry", "checksum_mismatch"):
            self.copies.labels(self.node_id, outcome)
        self.backfill_copies.labels(self.node_id)
        for was in REPAIRED_STATES:
            self.repairs.labels(self.node_id, was)

    def count(self, outcome: str) -> None:
        self.copies.labels(self.node_id, outcome).inc()
        if outcome == "copied":
            self.copied += 1

    def observe_lag(self, seconds: float) -> None:
        self.lag.labels(self.node_id).observe(seconds)
        self.recent.add(seconds)

    def count_backfill(self) -> None:
        """A copy made to catch up (a new or replacement member): counted, kept out of the lag figures."""
        self.backfilled += 1
        self.backfill_copies.labels(self.node_id).inc()

    def count_repair(self, was: str) -> None:
        self.repairs.labels(self.node_id, was).inc()


@dataclass
class NodeMetrics:
    """A storage node's own metrics (its replicator's live on the same registry)."""

    http: HttpMetrics
    node_id: str = ""
    region: str = ""
    set_id: str = ""
    uploads: Counter = field(init=False)
    upload_bytes: Counter = field(init=False)
    variant_builds: Counter = field(init=False)
    variant_build_duration: Histogram = field(init=False)
    variant_cache: Counter = field(init=False)
    capacity: Gauge = field(init=False)
    used: Gauge = field(init=False)
    free: Gauge = field(init=False)
    objects: Gauge = field(init=False)
    scrub_checked: Counter = field(init=False)
    scrub_corruptions: Counter = field(init=False)
    scrub_progress: Gauge = field(init=False)
    corruptions: Counter = field(init=False)
    processing: Counter = field(init=False)
    processing_duration: Histogram = field(init=False)
    processing_backlog: Gauge = field(init=False)
    processing_backlog_age: Gauge = field(init=False)
    tiers: TierMetrics = field(init=False)
    replication: ReplicationMetrics = field(init=False)
    stages: StageMetrics = field(init=False)
    uploads_ok: int = 0

    def __post_init__(self) -> None:
        reg = self.http.registry
        node_labels = ["node_id", "region", "set_id"]
        self.uploads = Counter(
            "minicdn_uploads_total", "Uploads by outcome (`ok` or the API error code)", ["outcome"], registry=reg
        )
        self.upload_bytes = Counter("minicdn_upload_bytes_total", "Bytes of accepted uploads", registry=reg)
        self.variant_builds = Counter("minicdn_variant_builds_total", "Variants built", ["fmt"], registry=reg)
        self.variant_build_duration = Histogram(
            "minicdn_variant_build_duration_seconds",
            "Time to build one variant with libvips",
            ["fmt"],
            registry=reg,
            buckets=BUILD_BUCKETS,
        )
        self.variant_cache = Counter(
            "minicdn_variant_cache_requests_total",
            "Variant requests answered from disk (hit) or built first (miss)",
            ["result"],
            registry=reg,
        )
        self.capacity = Gauge(
            "minicdn_node_capacity_bytes", "Usable capacity of the node", node_labels, registry=reg, **ONE_WRITER
        )
        self.used = Gauge(
            "minicdn_node_used_bytes", "Bytes stored by minicdn on the node", node_labels, registry=reg, **ONE_WRITER
        )
        self.free = Gauge(
            "minicdn_node_free_bytes",
            "Bytes still free for minicdn on the node",
            node_labels,
            registry=reg,
            **ONE_WRITER,
        )
        self.objects = Gauge(
            "minicdn_node_objects", "Images stored on the node", node_labels, registry=reg, **ONE_WRITER
        )
        # Scrubbing (the control-plane work) updates these; exported from the start so rules can use them.
        self.scrub_checked = Counter(
            "minicdn_scrub_objects_checked_total", "Objects re-hashed by the scrubber", registry=reg
        )
        self.scrub_corruptions = Counter(
            "minicdn_scrub_corruptions_total", "Objects whose bytes no longer match their SHA-256", registry=reg
        )
        self.scrub_progress = Gauge(
            "minicdn_scrub_progress_ratio", "Share of the current scrub pass done (0..1)", registry=reg, **ONE_WRITER
        )
        self.corruptions = Counter(
            "minicdn_corruptions_total",
            "Copies on this node found not to match their record, by the check that found them",
            ["how"],
            registry=reg,
        )
        for how in CORRUPTION_FOUND_BY:
            self.corruptions.labels(how)
        self.processing = Counter(
            "minicdn_processing_total", "Uploads processed off the request path, by outcome", ["outcome"], registry=reg
        )
        self.processing_duration = Histogram(
            "minicdn_processing_duration_seconds",
            "Validation, metadata, fingerprints and eager thumbnails of one upload",
            registry=reg,
            buckets=BUILD_BUCKETS,
        )
        self.processing_backlog = Gauge(
            "minicdn_processing_backlog", "Uploads taken and not yet processed", registry=reg, **ONE_WRITER
        )
        self.processing_backlog_age = Gauge(
            "minicdn_processing_backlog_age_seconds",
            "Age of the oldest upload not yet processed (0 when none)",
            registry=reg,
            **ONE_WRITER,
        )
        for outcome in PROCESSING_OUTCOMES:
            self.processing.labels(outcome)
        for result in ("hit", "miss"):
            self.variant_cache.labels(result)
        self.uploads.labels("ok")
        self.tiers = TierMetrics(reg, (self.node_id, self.region, self.set_id))
        self.replication = ReplicationMetrics(reg, self.node_id)
        self.stages = StageMetrics(reg)

    def observe_processing(self, outcome: str, seconds: float) -> None:
        self.processing.labels(outcome).inc()
        self.processing_duration.observe(seconds)

    def set_usage(self, capacity_bytes: int, used_bytes: int, free_bytes: int, objects: int) -> None:
        labels = (self.node_id, self.region, self.set_id)
        self.capacity.labels(*labels).set(capacity_bytes)
        self.used.labels(*labels).set(used_bytes)
        self.free.labels(*labels).set(free_bytes)
        self.objects.labels(*labels).set(objects)


class TierMetrics:
    """A node's storage tiers: use per tier, the variant cache, evictions and moves between tiers."""

    def __init__(self, reg: CollectorRegistry, node_labels: tuple[str, str, str]) -> None:
        self.node_labels = node_labels
        labels = ["node_id", "region", "set_id", "tier"]
        self.capacity = Gauge(
            "minicdn_node_tier_capacity_bytes", "Usable capacity of a tier", labels, registry=reg, **ONE_WRITER
        )
        self.used = Gauge("minicdn_node_tier_used_bytes", "Bytes stored in a tier", labels, registry=reg, **ONE_WRITER)
        self.free = Gauge(
            "minicdn_node_tier_free_bytes", "Bytes still free in a tier", labels, registry=reg, **ONE_WRITER
        )
        self.originals = Gauge(
            "minicdn_node_tier_originals", "Originals stored in a tier", labels, registry=reg, **ONE_WRITER
        )
        self.variant_bytes = Gauge(
            "minicdn_node_variant_bytes",
            "Bytes of variants (the cache) on the node",
            labels[:3],
            registry=reg,
            **ONE_WRITER,
        )
        self.evictions = Counter("minicdn_tier_evictions_total", "Variants evicted under disk pressure", registry=reg)
        self.evicted_bytes = Counter("minicdn_tier_evicted_bytes_total", "Bytes of evicted variants", registry=reg)
        self.moves = Counter(
            "minicdn_tier_moves_total", "Originals moved between tiers, by target", ["to"], registry=reg
        )
        self.moved_bytes = Counter(
            "minicdn_tier_moved_bytes_total", "Bytes of originals moved between tiers, by target", ["to"], registry=reg
        )
        self.move_failures = Counter(
            "minicdn_tier_move_failures_total",
            "Tier moves refused: the copy did not verify or could not be written",
            registry=reg,
        )
        for to in ("hot", "cold"):
            self.moves.labels(to)
            self.moved_bytes.labels(to)

    def set_tier(self, tier: str, capacity_bytes: int, used_bytes: int, free_bytes: int, originals: int) -> None:
        labels = (*self.node_labels, tier)
        self.capacity.labels(*labels).set(capacity_bytes)
        self.used.labels(*labels).set(used_bytes)
        self.free.labels(*labels).set(free_bytes)
        self.originals.labels(*labels).set(originals)


@dataclass(frozen=True)
class NodeView:
    """What the query service knows of one node, for the cluster gauges."""

    node_id: str
    region: str
    set_id: str
    healthy: bool
    heartbeat_age_s: float | None


class ClusterCollector(Collector):
    """Gauges read at scrape time from the query service's in-memory view (no Postgres per scrape)."""

    def __init__(self, nodes: object, stats: object) -> None:
        # ``nodes``: a callable returning NodeViews; ``stats``: a callable returning the last ClusterStats
        # snapshot as a mapping (see query_service.cluster_stats). Kept loose to avoid an import cycle.
        self._nodes = nodes
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        labels = ["node_id", "region", "set_id"]
        up = GaugeMetricFamily(
            "minicdn_cluster_node_up",
            "1 when the query service considers the node healthy (fresh heartbeat, serving state)",
            labels=labels,
        )
        age = GaugeMetricFamily(
            "minicdn_cluster_node_heartbeat_age_seconds",
            "Seconds since the node's last heartbeat (NaN: never seen)",
            labels=labels,
        )
        views: Iterable[NodeView] = self._nodes()  # type: ignore[operator]
        stats = self._stats()  # type: ignore[operator]
        pending = GaugeMetricFamily(
            "minicdn_replication_pending_replicas",
            "Replica rows still `pending` (the replication outbox), by target node",
            labels=["node_id"],
        )
        counts = dict(stats["pending_by_node"])
        for v in views:
            key = [v.node_id, v.region, v.set_id]
            up.add_metric(key, 1.0 if v.healthy else 0.0)
            age.add_metric(key, float("nan") if v.heartbeat_age_s is None else v.heartbeat_age_s)
            counts.setdefault(v.node_id, 0)  # every known node has a series, 0 included
        for node_id, count in sorted(counts.items()):
            pending.add_metric([node_id], float(count))
        yield up
        yield age
        yield pending
        yield GaugeMetricFamily(
            "minicdn_replication_oldest_pending_seconds",
            "Age of the oldest `pending` replica row (0 when none)",
            value=float(stats["oldest_pending_s"] or 0.0),
        )
        yield GaugeMetricFamily(
            "minicdn_images_under_replicated",
            "Images with at least one replica that is not `ok`",
            value=float(stats["under_replicated"]),
        )
        events = CounterMetricFamily(
            "minicdn_provisioning_events",
            "Control-plane actions recorded in Postgres (cluster-wide), by kind",
            labels=["kind"],
        )
        for kind in sorted({*PROVISIONING_KINDS, *stats["event_counts"]}):
            events.add_metric([kind], float(stats["event_counts"].get(kind, 0)))
        yield events
        yield GaugeMetricFamily(
            "minicdn_cluster_stats_age_seconds",
            "Seconds since the cluster figures above were read from Postgres",
            value=float(stats["age_s"]),
        )


class QueryMetrics:
    """The query service's metrics: HTTP, the cluster view, and the control plane's counters."""

    def __init__(self) -> None:
        self.http = HttpMetrics("query-service")
        reg = self.http.registry
        self.upload_tickets = Counter("minicdn_upload_tickets_total", "Signed upload URLs handed out", registry=reg)

    def watch_cluster(self, collector: ClusterCollector) -> None:
        self.http.registry.register(collector)
