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
