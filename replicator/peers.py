"""Choose where to copy an original from: healthy members holding an `ok` replica, same region first, then
nearest (``common.holders`` decides both)."""

from __future__ import annotations

import random
from typing import TypeAlias

from common.db import replicas as db_replicas
from common.geo import Point
from common.holders import Holder, rank_holders

Peer: TypeAlias = Holder  # what fetch_original copies from (node_id, base_url)


def sources(
    rows: list[db_replicas.HolderRow],
    here: Point,
    region: str,
    heartbeat_timeout_s: float,
    rng: random.Random | None = None,
) -> list[Peer]:
    """The peers to try among the holders ``rows`` (``db_replicas.copy_plan``'s), best first; empty when no
    healthy member holds a verified copy yet."""
    ranked = rank_holders(db_replicas.as_holders(rows), here, heartbeat_timeout_s, region=region, rng=rng)
    return [r.node for r in ranked]
