"""Placement of an upload: the nearest member of an open set, among healthy active nodes with room."""

from __future__ import annotations

from common.geo import REGIONS, Point
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


def test_a_node_past_its_processing_backlog_gets_no_uploads() -> None:
    from dataclasses import replace

    here = REGIONS["eu-west"]
    near, far = node("euw", "eu-west"), node("use", "us-east")
    behind = replace(near, processing_backlog=50, max_backlog=50)
    chosen = place([behind, far], here, 1000, healthy=lambda n: True)
    assert chosen is not None and chosen.node.node_id == "use"
    assert place([behind], here, 1000, healthy=lambda n: True) is None
    ignoring = place([behind], here, 1000, healthy=lambda n: True, backlog=False)  # what tells 503 apart
    assert ignoring is not None and ignoring.node.node_id == "euw"
    unbounded = replace(near, processing_backlog=10**6, max_backlog=0)
    assert place([unbounded], here, 1000, healthy=lambda n: True) is not None
    under = replace(near, processing_backlog=49, max_backlog=50)
    assert place([under], here, 1000, healthy=lambda n: True) is not None
