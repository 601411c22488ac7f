"""Pure locality ranking: which replica a client should be sent to."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from common.geo import Point, haversine_km
from query_service.registry import NodeInfo


@dataclass(frozen=True)
class Ranked:
    node: NodeInfo
    distance_km: float


def rank(nodes: Iterable[NodeInfo], client: Point, rng: random.Random | None = None) -> list[Ranked]:
    """Nearest first by great-circle distance; equal distances in random order (spreads load)."""
    rng = rng or random.Random()
    scored = [(haversine_km(client, n.point), rng.random(), n) for n in nodes]
    scored.sort(key=lambda t: (round(t[0], 3), t[1]))
    return [Ranked(n, d) for d, _tie, n in scored]
