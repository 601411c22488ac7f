"""Versioned event dataclasses published on NATS. Each has a ``name`` (the subject suffix) and a ``version``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar, Self


@dataclass(frozen=True)
class Event:
    name: ClassVar[str]
    version: ClassVar[int] = 1

    def to_json(self) -> bytes:
        return json.dumps({"v": self.version, **dataclasses.asdict(self)}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Self:
        raw = json.loads(data)
        if not isinstance(raw, dict):  # a stray publish must be dropped as bad, not redelivered forever
            raise ValueError(f"{cls.name}: not a JSON object")
        if raw.pop("v", None) != cls.version:
            raise ValueError(f"{cls.name}: unsupported event version")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


@dataclass(frozen=True)
class ImageUploaded(Event):
    """An original is durable on ``origin_node``; every other member of ``set_id`` should copy it."""

    name: ClassVar[str] = "uploaded"
    image_id: str
    set_id: str
    origin_node: str
    sha256: str
    bytes: int
    content_type: str


@dataclass(frozen=True)
class NodeHeartbeat(Event):
    """A node is alive, with the usage of its data directory."""

    name: ClassVar[str] = "heartbeat"
    node_id: str
    region: str
    set_id: str
    capacity_bytes: int
    used_bytes: int
    free_bytes: int
    objects: int
    in_flight: int
    version_str: str
    sent_at: float
    # Running totals since the node started (rates are their differences) and the recent replication
    # lag of its replicator; added fields with defaults, so older senders and receivers still agree.
    requests_total: int = 0
    bytes_sent_total: int = 0
    uploads_total: int = 0
    replicated_total: int = 0
    replication_lag_p50_s: float | None = None
    replication_lag_max_s: float | None = None
    # Per storage tier ({"hot": {"capacity_bytes", "used_bytes", "free_bytes", "originals"}, "cold": ...})
    # and the bytes of variants (the cache) on the node.
    tiers: dict[str, dict[str, int]] | None = None
    variant_bytes: int = 0
    # The file systems under its tiers ("<machine>:<st_dev>" -> total and free bytes), and its running total
    # of backfill copies (a new or replacement member catching up: not replication lag).
    filesystems: dict[str, dict[str, int]] | None = None
    backfilled_total: int = 0
    # The node's last word: its graceful stop began (SIGTERM), so no reader or upload should be sent to it. On the
    # heartbeat subject, so it cannot overtake the node's earlier beats.
    stopping: bool = False
    # Uploads taken and not yet processed, the oldest one's age, and the bound past which the node wants no
    # new uploads (``pipeline.max_backlog``; 0: none): the query services place new uploads elsewhere.
    processing_backlog: int = 0
    processing_oldest_s: float = 0.0
    max_backlog: int = 0


@dataclass(frozen=True)
class ImageRejected(Event):
    """Processing (or an operator) rejected ``image_id``: every member of ``set_id`` removes its files."""

    name: ClassVar[str] = "rejected"
    image_id: str
    set_id: str
    reason: str


@dataclass(frozen=True)
class ImageDeleted(Event):
    """An image was deleted (tombstoned in Postgres): every member of ``set_id`` removes its files."""

    name: ClassVar[str] = "deleted"
    image_id: str
    set_id: str


# Between the processes of one storage node (`node.workers`), on core NATS: ``storage_node.siblings``.


@dataclass(frozen=True)
class WorkerReport(Event):
    """A node's non-primary process, every second, to its primary: running totals since it started counting, so the
    primary's usage figures and heartbeat cover the whole node."""

    name: ClassVar[str] = "worker_report"
    worker: int
    pid: int
    started_at: float  # wall clock: when it began serving, 0.0 before (the primary's count of the disk may include it)
    used_bytes: dict[str, int]  # per tier: the bytes it stored minus those it removed
    originals: dict[str, int]  # per tier: the originals it stored minus those it removed
    variants_changed: list[str]  # images whose variants it built or removed since its previous report
    requests: int
    bytes_sent: int
    uploads: int
    in_flight: int  # now, not a total


@dataclass(frozen=True)
class FilesChanged(Event):
    """A process of a node removed variants of ``image_ids`` (``kind`` `variants`) or found their originals damaged
    (`corrupt`): the node's other processes forget what they remember of them."""

    name: ClassVar[str] = "files_changed"
    pid: int
    kind: str
    image_ids: list[str]


# Image and access events on core NATS (subjects outside the stream: fire and forget). They keep every query-service
# process's in-memory lookups current; a lost one is repaired by the processes' reconcile from Postgres.


@dataclass(frozen=True)
class ReplicaOk(Event):
    """``node_id`` now holds a verified copy of ``image_id`` (its replica row is `ok`): lookups may send readers."""

    name: ClassVar[str] = "replica_ok"
    image_id: str
    node_id: str


@dataclass(frozen=True)
class ImageProcessed(Event):
    """Processing (or an operator's approval) settled ``image_id`` as ``status`` (`ready` or `quarantined`), with
    the dimensions processing found."""

    name: ClassVar[str] = "processed"
    image_id: str
    status: str
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class KeyRevoked(Event):
    """API key ``key_id`` was revoked: every query-service process refuses it from now on."""

    name: ClassVar[str] = "key_revoked"
    key_id: str


@dataclass(frozen=True)
class AppChanged(Event):
    """App ``app_id``'s row changed (its default image): processes holding it read it again."""

    name: ClassVar[str] = "app_changed"
    app_id: str
