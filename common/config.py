"""Configuration: a TOML file, then ``MINICDN_<SECTION>_<KEY>`` env overrides, into frozen dataclasses.

Every key has a default and help text (``field(metadata={"help": ...})``); the table in docs/operations.md is
checked against them by a test. Errors name the bad key. Secrets are wrapped in :class:`Secret` so they never
reach a log line or a repr.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # 20 MB
DEFAULT_WIDTHS = (150, 300, 600, 1200, 2400)


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key."""


class Secret:
    """A string that never shows itself in repr/str (so it cannot leak into logs)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True)
class DatabaseSettings:
    url: Secret = _help("Postgres connection URL (libpq form); may contain a password.", default=Secret(""))
    pool_min: int = _help("Minimum connections kept open in the pool.", default=1)
    pool_max: int = _help("Maximum connections in the pool.", default=10)
    acquire_timeout_s: float = _help(
        "Seconds a request (or background task) waits for a pool connection once Postgres is known unreachable "
        "(the pool's last connection attempt failed); past it the request is answered `503 "
        "database_unavailable` instead of hanging.",
        default=0.5,
    )
    busy_timeout_s: float = _help(
        "Seconds a request waits for a pool connection while Postgres answers but every connection is busy (a "
        "burst); past it, `503 database_unavailable`. A wait is cut to `acquire_timeout_s` as soon as a "
        "connection attempt fails.",
        default=5.0,
    )
    startup_wait_s: float = _help(
        "Seconds a starting process waits for Postgres (down, or restarting during the start-up) before it gives "
        "up and exits: its start-up is begun again every second meanwhile.",
        default=30.0,
    )


@dataclass(frozen=True)
class NatsSettings:
    url: str = _help(
        "NATS server URL (JetStream enabled); a cluster's servers comma-separated.", default="nats://127.0.0.1:4222"
    )
    stream: str = _help("JetStream stream holding the replication events.", default="MINICDN")
    subject_prefix: str = _help("Prefix of every minicdn subject.", default="minicdn")
    stream_max_age_s: int = _help("How long events are kept: must cover the longest node outage.", default=7 * 86400)
    stream_replicas: int = _help(
        "Copies of the stream a NATS cluster keeps (1..5): 3 on three servers, so a lost server loses no event.",
        default=1,
    )


@dataclass(frozen=True)
class SigningSettings:
    keys: dict[str, Secret] = _help(
        "HMAC keys by key id (TOML table, or env `kid:secret,kid2:secret2`). The active one signs, all verify.",
        default_factory=dict,
    )
    active_kid: str = _help("Key id used to sign new URLs.", default="")
    upload_ttl_s: int = _help("Lifetime of a signed upload URL.", default=3600)
    peer_ttl_s: int = _help("Lifetime of a node-to-node request signature.", default=60)
    download_ttl_s: int = _help("Lifetime of a signed download URL (private images, originals).", default=3600)
    retired_kids: tuple[str, ...] = _help(
        "Key ids that must never verify again, even if their secret is still listed in signing.keys.", default=()
    )
    max_ttl_s: int = _help(
        "Longest lifetime a signature may claim; a later `exp` is refused (bad_signature).", default=7 * 86400
    )
    clock_skew_s: int = _help(
        "Allowance for a signer whose clock runs ahead, on the maximum-lifetime check.", default=30
    )


@dataclass(frozen=True)
class LimitsSettings:
    max_upload_bytes: int = _help("Largest accepted upload.", default=DEFAULT_MAX_UPLOAD_BYTES)
    widths: tuple[int, ...] = _help("Variant widths served without a signature.", default=DEFAULT_WIDTHS)
    max_pixels: int = _help("Largest accepted image, in pixels (width x height).", default=100_000_000)
    max_frames: int = _help("Most animation frames (pages) an accepted image may have.", default=500)
    max_variant_side: int = _help("Largest width or height of a variant a signed URL may ask for.", default=8192)
    unsized_upload_bytes: int = _help(
        "Room placement asks of a node for an upload ticket that states no `size` (a typical upload; the URL's "
        "cap stays `limits.max_upload_bytes`).",
        default=4 * 1024 * 1024,
    )


@dataclass(frozen=True)
class NodeSettings:
    node_id: str = _help("Unique id of this storage node.", default="")
    region: str = _help("Region the node lives in (e.g. us-east).", default="")
    lat: float = _help("Latitude of the node, degrees.", default=0.0)
    lon: float = _help("Longitude of the node, degrees.", default=0.0)
    set_id: str = _help("Replication set the node belongs to.", default="set-1")
    base_url: str = _help("Public base URL of the node (what clients are sent to).", default="")
    host: str = _help("Address the node listens on.", default="127.0.0.1")
    port: int = _help("Port the node listens on.", default=8081)
    data_dir: str = _help("Directory holding objects/ and tmp/ (one file system).", default="./data")
    capacity_bytes: int = _help("Usable capacity; 0 means the size of the disk.", default=0)
    cold_dir: str = _help(
        "Optional cold tier (e.g. an HDD mount) for originals not read for `tiers.cold_after_days`; empty means "
        "one tier, everything in `data_dir`.",
        default="",
    )
    cold_capacity_bytes: int = _help("Usable capacity of the cold tier; 0 means the size of its disk.", default=0)
    heartbeat_interval_s: float = _help(
        "Seconds between heartbeats, sent over NATS and written to Postgres independently (a node is alive while "
        "either shows it alive).",
        default=2.0,
    )
    stop_grace_s: float = _help(
        "On SIGTERM the node announces it is stopping, then keeps accepting requests this long (for clients handed "
        "its URL just before), then stops listening and finishes the requests in flight.",
        default=1.0,
    )
    render_threads: int = _help(
        "Sandboxed worker processes building variants on request, for the whole node (shared out among its "
        "`node.workers` processes, at least one each); 0 means the number of cores.",
        default=0,
    )
    workers: int = _help(
        "Serving processes of the node sharing its port (SO_REUSEPORT); one of them (the primary) also runs the "
        "background duties: heartbeats, replicator, processing, scrubber, tier manager. 0 means the number of cores.",
        default=0,
    )
    fast_lane: bool = _help(
        "Answer unsigned GETs of cached variants of public, ready images before aiohttp's request machinery (the "
        "same answer at a fraction of the cost); false sends every request through aiohttp.",
        default=True,
    )
    fd_cache_size: int = _help(
        "Open files each node process keeps for its most read originals and variants (a hit is sent with no "
        "open or stat in a thread); 0 turns the cache off. Each takes a descriptor: stay under `ulimit -n`.",
        default=1024,
    )
    cors_origin: str = _help(
        "Origins allowed to PUT uploads from a browser (CORS): `*` (any: the signed URL is the "
        "credential), a comma-separated list of origins, or empty to turn CORS off.",
        default="*",
    )
    published_tree: bool = _help(
        "Keep `published/` in `data_dir`: hard links to the variants anyone may be sent unsigned (ready, public, no "
        "hotlink allowlist), for nginx in front of the node to serve from disk (`minicdn nginx-config`).",
        default=False,
    )


@dataclass(frozen=True)
class PipelineSettings:
    workers: int = _help(
        "Sandboxed worker processes that decode and process uploads; 0 means the number of cores.", default=0
    )
    job_timeout_s: float = _help("Wall-clock limit of one processing job; a worker over it is killed.", default=60.0)
    worker_memory_mb: int = _help("Address-space limit of each worker process (RLIMIT_AS), MB.", default=1536)
    worker_max_jobs: int = _help("Jobs a worker runs before it is replaced (bounds leaks).", default=500)
    max_backlog: int = _help(
        "Uploads taken and not yet processed past which the node asks for no new uploads (the query services "
        "place them on other nodes, or answer `503 processing_backlog` with Retry-After); 0: no bound.",
        default=2000,
    )
    nice: int = _help(
        "CPU priority of the processing workers below the node's (a nice increment, 0-19): under a burst, "
        "acknowledging uploads, replicating and serving go first and processing drains after.",
        default=10,
    )
    burst_rate: int = _help(
        "Uploads arriving at a node within one second that make a burst: while one lasts, processing starts "
        "nothing new (the CPU goes to the 201s and the replicas' copies) and drains after it; 0: never waits.",
        default=50,
    )
    burst_max_wait_s: float = _help(
        "Longest an upload's processing waits for a burst to pass (the bound on the queue's age it adds); 0: "
        "never waits.",
        default=10.0,
    )
    eager_variants: tuple[str, ...] = _help(
        "Variants made at upload, before the image is `ready`.", default=("thumb.jpg", "thumb.webp")
    )
    thumb_size: int = _help("Side of the square `thumb` variant (attention-cropped).", default=150)
    jpeg_quality: int = _help("JPEG quality of variants (1-100).", default=82)
    webp_quality: int = _help("WebP quality of variants (1-100).", default=80)
    avif_quality: int = _help("AVIF quality of variants (1-100).", default=55)
    avif_effort: int = _help("AVIF encoder effort 0 (fastest) .. 9 (smallest); AVIF is the slow format.", default=2)
    png_compression: int = _help("PNG zlib compression level of variants (0-9).", default=6)
    keep_gps: bool = _help(
        "Store the GPS position found in EXIF (only whether it was present is stored otherwise).", default=False
    )
    near_duplicate_distance: int = _help(
        "Largest Hamming distance (of 64 bits) between perceptual hashes of near-duplicates; -1 turns the search off.",
        default=6,
    )
    sweep_interval_s: float = _help("Seconds between sweeps for uploads this node has not processed yet.", default=5.0)


@dataclass(frozen=True)
class CallbackSettings:
    allow_private: bool = _help("Allow callback URLs on loopback, link-local and private networks.", default=False)
    timeout_s: float = _help("Timeout of one callback POST.", default=5.0)
    max_attempts: int = _help("Attempts per callback (with exponential backoff) before giving up.", default=5)
    backoff_s: float = _help("Delay before the second attempt; doubled after each failure.", default=1.0)
    sweep_interval_s: float = _help(
        "Seconds between sweeps of the callback outbox for due deliveries (retries and rows a stopped process left).",
        default=5.0,
    )
    keep_days: float = _help("Days delivered and failed callbacks stay in the outbox table.", default=7.0)


@dataclass(frozen=True)
class ModerationSettings:
    command: str = _help(
        "Command run on each upload before `ready` (file path appended); exit 0 passes, "
        "exit 1 quarantines (first stdout line is the reason).",
        default="",
    )
    url: str = _help(
        "HTTP endpoint sent each upload (POST, raw bytes) before `ready`; a JSON answer "
        '`{"flag": true, "reason": ...}` quarantines.',
        default="",
    )
    timeout_s: float = _help("Timeout of one moderation check; a failed check quarantines.", default=30.0)


@dataclass(frozen=True)
class ReplicatorSettings:
    enabled: bool = _help("Run this node's replicator inside the storage-node process.", default=True)
    sweep_interval_s: float = _help("Seconds between sweeps of this node's pending replica rows.", default=5.0)
    sweep_age_s: float = _help("A pending row older than this is copied by the sweep.", default=5.0)
    concurrency: int = _help(
        "Images copied at once (a copy mostly waits: on the peer, the disk, Postgres).", default=32
    )
    fetch_timeout_s: float = _help("Timeout of one copy from a peer.", default=60.0)
    max_bytes_per_s: int = _help(
        "Cap on the bytes/s this node's replicator copies from peers (backfill, repair, replication); 0 no cap.",
        default=0,
    )
    metrics_port: int = _help(
        "Port of /metrics for `minicdn replicator` run on its own (0: none; inside a node "
        "process its metrics are on the node's /metrics).",
        default=0,
    )


@dataclass(frozen=True)
class QuerySettings:
    host: str = _help("Address the query service listens on.", default="127.0.0.1")
    port: int = _help("Port the query service listens on.", default=8080)
    public_url: str = _help("Public base URL of the query service.", default="")
    default_lat: float = _help("Latitude used for clients GeoIP cannot place.", default=39.0)
    default_lon: float = _help("Longitude used for clients GeoIP cannot place.", default=-77.5)
    node_refresh_s: float = _help("Seconds between reloads of the node table.", default=5.0)
    location_cache_size: int = _help(
        "Images whose status, owner and `ok` replicas are kept in memory for URL lookups (least recently used "
        "dropped first; about 0.5 KB each, per worker).",
        default=100_000,
    )
    key_cache_size: int = _help(
        "API keys kept in memory by hash (least recently used dropped first), and as many apps.", default=10_000
    )
    reconcile_s: float = _help(
        "Seconds between background reconciles of the in-memory keys, apps and image locations with Postgres "
        "(events keep them current in between; this repairs what a lost event missed).",
        default=10.0,
    )
    fast_lane: bool = _help(
        "Answer URL lookups of images and keys already in memory before aiohttp's request machinery (the same "
        "answer at a fraction of the cost); false sends every request through aiohttp.",
        default=True,
    )
    workers: int = _help(
        "Query-service processes sharing the port (SO_REUSEPORT), each with its own in-memory state; one of them "
        "also runs the background singletons. 0 means the number of cores.",
        default=0,
    )
    stats_interval_s: float = _help(
        "Seconds between reads of the replication backlog for /dashboard and /metrics.", default=5.0
    )
    history_s: float = _help("Seconds of history the dashboard's charts show (kept in memory).", default=3600.0)
    history_points: int = _help(
        "Points per chart series at most: samples are averaged into history_s / history_points buckets.",
        default=120,
    )
    upload_demo: bool = _help(
        "Serve the browser upload page at /upload-demo (`minicdn dev` turns it on).", default=False
    )
    srcset_widths: tuple[int, ...] = _help(
        "Widths GET /v1/images/{id}/srcset lists when the request names none; empty: every width of limits.widths.",
        default=(),
    )


@dataclass(frozen=True)
class HealthSettings:
    heartbeat_timeout_s: float = _help("A node whose last heartbeat is older than this is unhealthy.", default=10.0)
    recover_s: float = _help(
        "An unhealthy node is used again only after heartbeating this long without a gap (hysteresis).", default=10.0
    )
    dead_after_s: float = _help("A node silent this long is marked `dead` (by the capacity monitor).", default=600.0)


@dataclass(frozen=True)
class CapacitySettings:
    enabled: bool = _help("Run the capacity monitor (one leader among the query services acts).", default=True)
    interval_s: float = _help("Seconds between capacity checks of the leader.", default=5.0)
    sample_interval_s: float = _help("Seconds between usage samples kept for growth rates.", default=60.0)
    growth_window_s: float = _help("Usage history used for growth rates and days until full.", default=86400.0)
    forecast_min_span_s: float = _help(
        "Forecasts (growth, days until full) are shown and act only on usage samples spanning at least this long.",
        default=3600.0,
    )
    provision_cooldown_s: float = _help(
        "After a provisioning ends, the forecast may not start another for this long.", default=3600.0
    )
    high_water: float = _help("A set with a member this full (0..1) is closed for new uploads.", default=0.80)
    critical: float = _help("A node this full (0..1) goes `readonly`.", default=0.95)
    provision_headroom: float = _help(
        "Provision a new set when the open sets' room before the high-water mark falls below this fraction "
        "of one set's capacity.",
        default=0.25,
    )
    provision_horizon_days: float = _help(
        "Provision a new set when the open sets are forecast to close within this many days.", default=7.0
    )
    provision_timeout_s: float = _help(
        "A provisioning whose nodes have not all registered by then failed.", default=600.0
    )
    auto_replace_after_s: float = _help(
        "Replace a `dead` node automatically this long after it died; 0 never (operators run `node replace`).",
        default=0.0,
    )


@dataclass(frozen=True)
class ProvisionerSettings:
    kind: str = _help(
        "`none`, `local` (node configs for `minicdn dev` to start), `command` or `webhook`.", default="none"
    )
    local_dir: str = _help("Local provisioner: directory the new nodes' configs and data go to.", default="")
    local_node_capacity_bytes: int = _help("Local provisioner: capacity of each new node; 0 the disk.", default=0)
    local_host: str = _help("Local provisioner: address the new nodes listen on.", default="127.0.0.1")
    command: str = _help("Command provisioner: program run with the plan as JSON on stdin.", default="")
    webhook_url: str = _help(
        "Webhook provisioner: URL the plan is POSTed to (signed with the signing key).", default=""
    )
    timeout_s: float = _help("How long the command or webhook may take to accept a plan.", default=60.0)


@dataclass(frozen=True)
class DeletesSettings:
    purge_command: str = _help("Optional program run with the purged URLs as JSON on stdin after a delete.", default="")
    purge_webhook: str = _help("Optional URL that gets the purged URLs POSTed (signed) after a delete.", default="")


@dataclass(frozen=True)
class ScrubSettings:
    bytes_per_s: int = _help("Re-hash stored originals at this rate; 0 disables scrubbing.", default=8 * 1024 * 1024)
    interval_s: float = _help(
        "Pause between two full scrub passes over a node: a damaged original is found within one pass (stored "
        "original bytes / `scrub.bytes_per_s`) plus this.",
        default=60.0,
    )


@dataclass(frozen=True)
class TiersSettings:
    interval_s: float = _help("Seconds between two passes of a node's tier manager.", default=30.0)
    hot_high_water: float = _help(
        "Share of the hot tier's capacity (the node's, with one tier) in use past which variants are evicted, "
        "least recently used first.",
        default=0.9,
    )
    hot_low_water: float = _help("Eviction stops once the hot tier's use is back under this share.", default=0.8)
    cold_after_days: float = _help("Originals not read for this many days move to `node.cold_dir`.", default=30.0)
    promote_reads: int = _help(
        "Reads of a cold original within `tiers.promote_window_s` that move it back to the hot tier (at most "
        "1000); 0: never.",
        default=3,
    )
    promote_window_s: float = _help("Window in which `tiers.promote_reads` reads must fall.", default=3600.0)
    move_bytes_per_s: int = _help(
        "Bytes per second copied between tiers (cold moves and promotions); 0 means no limit.", default=32 * 1024**2
    )
    max_moves_per_pass: int = _help("Most originals moved between tiers in one pass.", default=1000)
    max_evictions_per_pass: int = _help("Most variants evicted in one pass.", default=10000)
    idle_grace_s: float = _help(
        "A file read this recently is never evicted or moved (a reader may be about to open it).", default=60.0
    )
    unlink_grace_s: float = _help(
        "Seconds the old copy of a moved original is kept after readers were switched to the new one.",
        default=5.0,
    )


@dataclass(frozen=True)
class LifecycleSettings:
    sweep_interval_s: float = _help(
        "Seconds between two lifecycle sweeps of a query service (unused tickets -> `expired`, retention).",
        default=30.0,
    )
    retention_s: float = _help(
        "Seconds `expired` and `rejected` images stay visible (status and reason) before their rows are removed.",
        default=7 * 86400.0,
    )
    batch_size: int = _help("Most rows one lifecycle sweep expires, and removes, per statement.", default=1000)


@dataclass(frozen=True)
class FallbackSettings:
    max_age_s: int = _help(
        "Cache lifetime (Cache-Control max-age) of an answer that gives an app's default image for a missing "
        "one: short, as the app may change its default or the image may come back.",
        default=60,
    )


@dataclass(frozen=True)
class GeoipSettings:
    db: str = _help("GeoIP2/GeoLite2 City database; empty means the one shipped by maxminddb-geolite2.", default="")


@dataclass(frozen=True)
class LogSettings:
    level: str = _help("Log level.", default="INFO")
    format: str = _help("`text` or `json`.", default="text")
    access: bool = _help("One log line per HTTP request (method, route, status, bytes, ms, request id).", default=True)


@dataclass(frozen=True)
class HttpSettings:
    header_timeout_s: float = _help(
        "Seconds a connection may take to send complete request headers (slowloris guard); also the idle "
        "keep-alive timeout.",
        default=10.0,
    )
    body_read_timeout_s: float = _help(
        "Longest pause while a request body arrives; a slower client gets 408.", default=15.0
    )
    max_header_bytes: int = _help("Largest total size of a request's headers; more is refused with 431.", default=8192)
    hotlink_refresh_s: float = _help("Seconds between a node's reloads of the apps' Referer allowlists.", default=10.0)
    trusted_proxies: tuple[str, ...] = _help(
        "Networks (CIDR) of reverse proxies whose X-Forwarded-For / Forwarded headers are believed.", default=()
    )


@dataclass(frozen=True)
class RateLimitSettings:
    requests_per_s: float = _help(
        "Sustained requests per second per API key, per query-service process (a key may override it); 0: off.",
        default=50.0,
    )
    burst: int = _help("Requests a key may make at once before the rate applies.", default=100)


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    nats: NatsSettings = field(default_factory=NatsSettings)
    signing: SigningSettings = field(default_factory=SigningSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    node: NodeSettings = field(default_factory=NodeSettings)
    replicator: ReplicatorSettings = field(default_factory=ReplicatorSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    callbacks: CallbackSettings = field(default_factory=CallbackSettings)
    moderation: ModerationSettings = field(default_factory=ModerationSettings)
    query: QuerySettings = field(default_factory=QuerySettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    capacity: CapacitySettings = field(default_factory=CapacitySettings)
    provisioner: ProvisionerSettings = field(default_factory=ProvisionerSettings)
    deletes: DeletesSettings = field(default_factory=DeletesSettings)
    scrub: ScrubSettings = field(default_factory=ScrubSettings)
    tiers: TiersSettings = field(default_factory=TiersSettings)
    lifecycle: LifecycleSettings = field(default_factory=LifecycleSettings)
    fallback: FallbackSettings = field(default_factory=FallbackSettings)
    geoip: GeoipSettings = field(default_factory=GeoipSettings)
    log: LogSettings = field(default_factory=LogSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    ratelimit: RateLimitSettings = field(default_factory=RateLimitSettings)

    def signing_key(self, kid: str) -> bytes | None:
        secret = self.signing.keys.get(kid)
        return secret.reveal().encode() if secret and kid not in self.signing.retired_kids else None


_SECTION_TYPES = typing.get_type_hints(Settings)
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def iter_keys() -> list[tuple[str, str, str, Any]]:
    """(section, key, help, default) for every setting: the documented surface."""
    out = []
    for section, cls in _SECTION_TYPES.items():
        for f in dataclasses.fields(cls):
            out.append((section, f.name, f.metadata["help"], _default(f)))
    return out


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"setting {f.name} has no default")  # every setting must have one: it is documented


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    return int(value)


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _to_ints(value: Any) -> tuple[int, ...]:
    items = value if isinstance(value, list | tuple) else [v for v in str(value).split(",") if v.strip()]
    return tuple(_to_int(v) for v in items)


def _to_strs(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return tuple(_to_str(v).strip() for v in items if _to_str(v).strip())


def _to_secrets(value: Any) -> dict[str, Secret]:
    if isinstance(value, str):
        text = value.strip()
        value = (
            json.loads(text)
            if text.startswith("{")
            else dict(part.split(":", 1) for part in text.split(",") if part.strip())
        )
    if not isinstance(value, Mapping):
        raise ValueError("expected a table of key id -> secret")
    return {str(k).strip(): Secret(str(v).strip()) for k, v in value.items()}


_CONVERTERS: dict[Any, Any] = {
    bool: _to_bool,
    int: _to_int,
    float: float,
    str: _to_str,
    Secret: lambda v: v if isinstance(v, Secret) else Secret(str(v)),
    tuple[int, ...]: _to_ints,
    tuple[str, ...]: _to_strs,
    dict[str, Secret]: _to_secrets,
}


def _coerce(key: str, typ: Any, value: Any) -> Any:
    """Turn a TOML value or an env string into the field's type, or raise ConfigError naming the key."""
    try:
        return _CONVERTERS[typ](value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key}: invalid value ({exc})") from None


def _build_section(name: str, cls: type, raw: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown setting")
    for key in known:
        env_name = f"MINICDN_{name}_{key}".upper()
        if env_name in env:
            values[key] = _coerce(env_name, hints[key], env[env_name])
        elif key in raw:
            values[key] = _coerce(f"{name}.{key}", hints[key], raw[key])
    return cls(**values)


def load_settings(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Read ``path`` (TOML, optional), apply ``overrides`` then env vars, validate and return Settings."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)
    for section in raw:
        if section not in _SECTION_TYPES:
            raise ConfigError(f"{section}: unknown section")
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{section}: must be a table")
    built = {name: _build_section(name, cls, raw.get(name, {}), env) for name, cls in _SECTION_TYPES.items()}
    settings = Settings(**built)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    """Checks that hold for every process; role-specific checks live in require_*()."""
    lim = settings.limits
    if lim.max_upload_bytes <= 0:
        raise ConfigError("limits.max_upload_bytes: must be positive")
    if not lim.widths or any(w <= 0 or w > 16384 for w in lim.widths):
        raise ConfigError("limits.widths: need at least one width, each 1..16384")
    if any(w <= 0 or w > 16384 for w in settings.query.srcset_widths):
        raise ConfigError("query.srcset_widths: each width must be 1..16384")
    if settings.query.history_s <= 0 or settings.query.history_points < 2:
        raise ConfigError("query.history_s: must be positive; query.history_points: at least 2")
    if not 1 <= settings.nats.stream_replicas <= 5:
        raise ConfigError("nats.stream_replicas: must be 1..5 (JetStream's limit)")
    _validate_access(settings)
    _validate_pipeline(settings)
    _validate_callbacks(settings)
    if settings.log.format not in ("text", "json"):
        raise ConfigError("log.format: must be `text` or `json`")
    if settings.signing.active_kid and settings.signing.active_kid not in settings.signing.keys:
        raise ConfigError("signing.active_kid: no key with that id in signing.keys")
    cap = settings.capacity
    if not 0 < cap.high_water <= cap.critical <= 1:
        raise ConfigError("capacity.high_water: need 0 < high_water <= critical <= 1")
    if settings.provisioner.kind not in ("none", "local", "command", "webhook"):
        raise ConfigError("provisioner.kind: must be none, local, command or webhook")
    if settings.scrub.bytes_per_s < 0:
        raise ConfigError("scrub.bytes_per_s: must be 0 or positive")
    _validate_tiers(settings)
    _validate_lifecycle(settings)
    for kid, secret in settings.signing.keys.items():
        if len(secret.reveal()) < 16:
            raise ConfigError(f"signing.keys.{kid}: secret must be at least 16 characters")


def _validate_tiers(settings: Settings) -> None:
    tiers = settings.tiers
    if not 0 < tiers.hot_low_water < tiers.hot_high_water <= 1:
        raise ConfigError("tiers.hot_high_water: need 0 < hot_low_water < hot_high_water <= 1")
    if tiers.cold_after_days <= 0 or tiers.interval_s <= 0:
        raise ConfigError("tiers.cold_after_days, tiers.interval_s: must be positive")
    if min(tiers.promote_reads, tiers.move_bytes_per_s, tiers.max_moves_per_pass, tiers.max_evictions_per_pass) < 0:
        raise ConfigError("tiers: counts and rates must be 0 or positive")
    if tiers.promote_reads > 1000:
        raise ConfigError("tiers.promote_reads: at most 1000")
    node = settings.node
    if node.cold_dir and node.data_dir and Path(node.cold_dir).absolute() == Path(node.data_dir).absolute():
        raise ConfigError("node.cold_dir: must not be node.data_dir")


def _validate_lifecycle(settings: Settings) -> None:
    life = settings.lifecycle
    if life.sweep_interval_s <= 0 or life.retention_s < 0 or life.batch_size < 1:
        raise ConfigError("lifecycle: sweep_interval_s and batch_size must be positive, retention_s not negative")
    if settings.limits.unsized_upload_bytes <= 0 or settings.fallback.max_age_s < 0:
        raise ConfigError("limits.unsized_upload_bytes must be positive, fallback.max_age_s not negative")


def _validate_access(settings: Settings) -> None:
    for network in settings.http.trusted_proxies:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"http.trusted_proxies: {network!r} is not a network") from None
    if settings.http.header_timeout_s <= 0 or settings.http.body_read_timeout_s <= 0:
        raise ConfigError("http.header_timeout_s / http.body_read_timeout_s: must be positive")
    if settings.http.max_header_bytes < 1024:
        raise ConfigError("http.max_header_bytes: must be at least 1024")
    if settings.ratelimit.requests_per_s < 0 or settings.ratelimit.burst < 1:
        raise ConfigError("ratelimit.requests_per_s / ratelimit.burst: rate >= 0, burst >= 1")
    if settings.signing.active_kid and settings.signing.active_kid in settings.signing.retired_kids:
        raise ConfigError("signing.active_kid: this key id is retired")
    for key in ("upload_ttl_s", "download_ttl_s", "peer_ttl_s"):
        if not 0 < getattr(settings.signing, key) <= settings.signing.max_ttl_s:
            raise ConfigError(f"signing.{key}: must be positive and at most signing.max_ttl_s")


def _validate_pipeline(settings: Settings) -> None:
    from common.variants import parse_variant  # variants imports errors only; no cycle at import time

    pipe = settings.pipeline
    ranges = {
        **dict.fromkeys(("jpeg_quality", "webp_quality", "avif_quality"), (1, 100)),
        **{"avif_effort": (0, 9), "png_compression": (0, 9), "nice": (0, 19), "thumb_size": (16, 1024)},
    }
    for key, (low, high) in ranges.items():
        if not low <= getattr(pipe, key) <= high:
            raise ConfigError(f"pipeline.{key}: must be within {low}..{high}")
    for key in ("max_backlog", "burst_rate", "burst_max_wait_s"):
        if getattr(pipe, key) < 0:
            raise ConfigError(f"pipeline.{key}: 0 (off) or more")
    if pipe.near_duplicate_distance > 16:
        raise ConfigError("pipeline.near_duplicate_distance: at most 16 (-1 turns it off)")
    for name in pipe.eager_variants:
        try:
            spec = parse_variant(name)
        except Exception:
            raise ConfigError(f"pipeline.eager_variants: {name!r} is not a variant name") from None
        if spec.fmt == "auto":
            raise ConfigError(f"pipeline.eager_variants: {name!r} needs a concrete format")
    if settings.limits.max_frames < 1 or settings.limits.max_variant_side < 16:
        raise ConfigError("limits.max_frames / limits.max_variant_side: must be positive")


def _validate_callbacks(settings: Settings) -> None:
    for key in ("max_attempts", "timeout_s", "sweep_interval_s"):
        if getattr(settings.callbacks, key) <= 0:
            raise ConfigError(f"callbacks.{key}: must be positive")
    for key in ("backoff_s", "keep_days"):
        if getattr(settings.callbacks, key) < 0:
            raise ConfigError(f"callbacks.{key}: must not be negative")


def require_common(settings: Settings) -> None:
    if not settings.database.url.reveal():
        raise ConfigError("database.url: required (or MINICDN_DATABASE_URL)")
    if settings.database.acquire_timeout_s <= 0:
        raise ConfigError("database.acquire_timeout_s: must be positive")
    if settings.database.startup_wait_s < 0:
        raise ConfigError("database.startup_wait_s: must not be negative")
    if settings.database.busy_timeout_s < settings.database.acquire_timeout_s:
        raise ConfigError("database.busy_timeout_s: must be at least database.acquire_timeout_s")
    if not settings.signing.active_kid:
        raise ConfigError("signing.active_kid: required, with its secret in signing.keys")


def require_node(settings: Settings) -> None:
    require_common(settings)
    node = settings.node
    for key in ("node_id", "region", "set_id"):
        if not _ID_RE.match(getattr(node, key)):
            raise ConfigError(f"node.{key}: required, lowercase letters, digits and '-'")
    if not node.base_url.startswith(("http://", "https://")):
        raise ConfigError("node.base_url: required, an http(s) URL")
    if not -90 <= node.lat <= 90:
        raise ConfigError("node.lat: must be within -90..90")
    if not -180 <= node.lon <= 180:
        raise ConfigError("node.lon: must be within -180..180")
    if node.heartbeat_interval_s <= 0 or node.stop_grace_s < 0:
        raise ConfigError("node.heartbeat_interval_s: must be positive; node.stop_grace_s: not negative")
    if node.workers < 0 or node.render_threads < 0:
        raise ConfigError("node.workers, node.render_threads: 0 (cores) or more")
    if node.fd_cache_size < 0:
        raise ConfigError("node.fd_cache_size: 0 (off) or more")


def require_query(settings: Settings) -> None:
    require_common(settings)
    prov = settings.provisioner
    if prov.kind == "local" and not prov.local_dir:
        raise ConfigError("provisioner.local_dir: required for the local provisioner")
    if prov.kind == "command" and not prov.command:
        raise ConfigError("provisioner.command: required for the command provisioner")
    if prov.kind == "webhook" and not prov.webhook_url.startswith(("http://", "https://")):
        raise ConfigError("provisioner.webhook_url: required, an http(s) URL, for the webhook provisioner")
    if not -90 <= settings.query.default_lat <= 90:
        raise ConfigError("query.default_lat: must be within -90..90")
    if not -180 <= settings.query.default_lon <= 180:
        raise ConfigError("query.default_lon: must be within -180..180")
    query = settings.query
    if query.workers < 0 or query.location_cache_size < 1 or query.key_cache_size < 1 or query.reconcile_s <= 0:
        raise ConfigError(
            "query.workers: 0 (cores) or more; query.location_cache_size, query.key_cache_size: at least 1; "
            "query.reconcile_s: positive"
        )
