from __future__ import annotations

import random

from common.geo import REGIONS, Point
from query_service.nearest import rank
from query_service.placement import place
from query_service.registry import NodeInfo


def node(
    node_id: str,
    region: str,
    *,
    set_id: str = "set-1",
    set_state: str = "open",
    state: str = "active",
    free: int = 10**9,
    seen: float = 0.0,
) -> NodeInfo:
    return NodeInfo(
        node_id, region, set_id, f"http://{node_id}", REGIONS[region], state, set_state, 10**9, 0, free, 0, seen
    )


NODES = [node("use", "us-east"), node("euw", "eu-west"), node("aps", "ap-southeast")]


def test_rank_nearest_first() -> None:
    dublin = Point(53.35, -6.26)
    assert [r.node.node_id for r in rank(NODES, dublin)] == ["euw", "use", "aps"]
    singapore = Point(1.29, 103.85)
    assert [r.node.node_id for r in rank(NODES, singapore)][0] == "aps"


def test_rank_breaks_ties_randomly() -> None:
    twins = [node("a", "us-east"), node("b", "us-east")]
    firsts = {rank(twins, REGIONS["us-east"], random.Random(seed))[0].node.node_id for seed in range(20)}
    assert firsts == {"a", "b"}


def test_placement_skips_closed_unhealthy_full_and_readonly_nodes() -> None:
    tokyo_ish = Point(1.3, 103.8)
    nodes = [
        node("aps-closed", "ap-southeast", set_id="set-0", set_state="closed"),
        node("aps-full", "ap-southeast", set_id="set-2", free=10),
        node("aps-ro", "ap-southeast", set_id="set-3", state="readonly"),
        node("aps-down", "ap-southeast", set_id="set-4", seen=-1.0),
        node("euw", "eu-west"),
        node("use", "us-east"),
    ]
    chosen = place(nodes, tokyo_ish, 1000, healthy=lambda n: n.last_seen >= 0)
    assert chosen is not None and chosen.node.node_id == "euw"
    assert place(nodes[:4], tokyo_ish, 1000, healthy=lambda n: n.last_seen >= 0) is None
