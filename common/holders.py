"""Which node to send a reader (or a copy) to: the one definition of a healthy node and the one ranking of
nodes, nearest first. Pure (no I/O, no clock): callers bring heartbeat ages and, for tests, a seeded RNG.

Three paths use it: the query service's URL lookups and placement (over its in-memory registry, whose
hysteresis is layered on top of ``serves_reads``/``is_fresh``), the replicator choosing a source to copy
from, and a storage node answering a miss with a 307 (both over the holder rows of ``common.db.replicas``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from common.geo import Point, haversine_km

# Node states in which a node serves reads (`dead` does not; the schema allows no other state).
SERVING_STATES = frozenset({"active", "readonly", "draining"})


def serves_reads(state: str) -> bool:
    return state in SERVING_STATES


def is_fresh(heartbeat_age_s: float | None, timeout_s: float) -> bool:
    """The last heartbeat is younger than the timeout (``None``: never heard from)."""
    return heartbeat_age_s is not None and heartbeat_age_s < timeout_s


def is_healthy(state: str, heartbeat_age_s: float | None, timeout_s: float, stopping: bool = False) -> bool:
    """The one definition: the node's state serves reads, it has heartbeaten within the timeout, and it has not
    announced that it is stopping (its graceful stop began: it is about to go away)."""
    return serves_reads(state) and not stopping and is_fresh(heartbeat_age_s, timeout_s)


class Located(Protocol):
    """What ranking needs of a node (a ``Holder``, or the query service's ``NodeInfo``)."""

    @property
    def node_id(self) -> str: ...

    @property
    def region(self) -> str: ...

    @property
    def point(self) -> Point: ...


N = TypeVar("N", bound=Located)


@dataclass(frozen=True)
class Ranked(Generic[N]):
    node: N
    distance_km: float


def rank(
    nodes: Iterable[N], here: Point, rng: random.Random | None = None, *, region: str | None = None
) -> list[Ranked[N]]:
    """The one ranking: nodes in ``region`` first (when given), then by great-circle distance from ``here``;
    equal distances (to the metre) in random order, which spreads load over co-located nodes."""
    tie = (rng or random).random  # the module's generator unless told: seeding a new one costs a lookup dearly
    scored = [(region is not None and n.region != region, haversine_km(here, n.point), tie(), n) for n in nodes]
    scored.sort(key=lambda t: (t[0], round(t[1], 3), t[2]))
    return [Ranked(n, d) for _other, d, _tie, n in scored]


@dataclass(frozen=True)
class Holder:
    """A node holding a replica of an image, as read from Postgres (ages on the database's clock)."""

    node_id: str
    region: str
    base_url: str
    point: Point
    state: str  # the node's state
    heartbeat_age_s: float | None  # None until its first heartbeat
    replica_state: str = "ok"
    stopping: bool = False  # it announced that it is stopping, and has not registered again since


def usable(holder: Holder, timeout_s: float) -> bool:
    """A healthy node with a verified (`ok`) copy."""
    return holder.replica_state == "ok" and is_healthy(holder.state, holder.heartbeat_age_s, timeout_s, holder.stopping)


def rank_holders(
    holders: Iterable[Holder],
    here: Point,
    timeout_s: float,
    *,
    region: str | None = None,
    rng: random.Random | None = None,
) -> list[Ranked[Holder]]:
    """The usable holders, ranked (same region first, nearest next); empty when none is usable."""
    return rank((h for h in holders if usable(h, timeout_s)), here, rng, region=region)
