"""The one health rule and the one ranking of holders (``common.holders``), with explicit ages and seeds."""

from __future__ import annotations

import random

import pytest

from common.geo import REGIONS, Point
from common.holders import Holder, is_healthy, rank, rank_holders

TIMEOUT_S = 6.0
DUBLIN = Point(53.35, -6.26)


def node(
    node_id: str,
    region: str,
    *,
    point: Point | None = None,
    state: str = "active",
    age: float | None = 1.0,
    replica: str = "ok",
) -> Holder:
    return Holder(node_id, region, f"http://{node_id}", point or REGIONS[region], state, age, replica)


NODES = [node("use", "us-east"), node("euw", "eu-west"), node("aps", "ap-southeast")]


def ranked_ids(holders: list[Holder], here: Point, region: str | None = None, seed: int = 0) -> list[str]:
    return [r.node.node_id for r in rank_holders(holders, here, TIMEOUT_S, region=region, rng=random.Random(seed))]


# --- rank, the ordering alone (moved from tests/query_service/test_nearest.py) ------------------------------
def test_rank_nearest_first() -> None:
    dublin = Point(53.35, -6.26)
    assert [r.node.node_id for r in rank(NODES, dublin)] == ["euw", "use", "aps"]
    singapore = Point(1.29, 103.85)
    assert [r.node.node_id for r in rank(NODES, singapore)][0] == "aps"


def test_rank_breaks_ties_randomly() -> None:
    twins = [node("a", "us-east"), node("b", "us-east")]
    firsts = {rank(twins, REGIONS["us-east"], random.Random(seed))[0].node.node_id for seed in range(20)}
    assert firsts == {"a", "b"}


# --- the health rule ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("state", "age", "healthy"),
    [
        ("active", 0.0, True),
        ("readonly", 1.0, True),  # read-only and draining nodes still serve what they hold
        ("draining", 5.9, True),
        ("active", 6.0, False),  # a heartbeat exactly one timeout old is stale
        ("active", 60.0, False),
        ("active", None, False),  # never heartbeaten
        ("dead", 0.0, False),
    ],
)
def test_healthy_means_serving_state_and_a_heartbeat_within_the_timeout(
    state: str, age: float | None, healthy: bool
) -> None:
    assert is_healthy(state, age, TIMEOUT_S) is healthy


def test_a_node_that_announced_it_is_stopping_is_not_healthy_whatever_its_heartbeat() -> None:
    assert is_healthy("active", 0.0, TIMEOUT_S, stopping=False)
    assert not is_healthy("active", 0.0, TIMEOUT_S, stopping=True)
    assert not is_healthy("draining", 0.0, TIMEOUT_S, stopping=True)  # the operator state does not matter
    going = Holder("going", "eu-west", "http://going", REGIONS["eu-west"], "active", 0.1, "ok", stopping=True)
    assert ranked_ids([going, *NODES], DUBLIN, region="eu-west") == ["euw", "use", "aps"]  # never the leaving one


# --- rank_holders: health, verified copy, region, distance, ties ----------------------------------------------
def test_same_region_wins_over_a_nearer_node_of_another_region() -> None:
    here = REGIONS["us-east"]
    far_same = node("atl", "us-east", point=Point(33.75, -84.39))  # ~900 km away, same region
    near_other = node("next-door", "us-central", point=Point(39.1, -78.0))  # ~45 km away, another region
    assert ranked_ids([near_other, far_same], here, region="us-east") == ["atl", "next-door"]
    assert ranked_ids([near_other, far_same], here) == ["next-door", "atl"]  # no region given: distance alone


def test_other_regions_by_great_circle_distance() -> None:
    ranked = rank_holders(NODES, DUBLIN, TIMEOUT_S, region="eu-central", rng=random.Random(0))
    assert [r.node.node_id for r in ranked] == ["euw", "use", "aps"]
    distances = [r.distance_km for r in ranked]
    assert distances == sorted(distances) and distances[0] < 10  # Dublin to the eu-west point: a few km


def test_unhealthy_stale_dead_and_unverified_holders_are_left_out() -> None:
    holders = [
        node("stale", "eu-west", age=TIMEOUT_S),
        node("silent", "eu-west", age=None),
        node("dead", "eu-west", state="dead"),
        node("pending", "eu-west", replica="pending"),
        node("corrupt", "eu-west", replica="corrupt"),
        node("missing", "eu-west", replica="missing"),
        node("draining", "us-east", state="draining"),
        node("readonly", "ap-southeast", state="readonly", age=TIMEOUT_S - 0.1),
    ]
    assert ranked_ids(holders, DUBLIN, region="eu-west") == ["draining", "readonly"]


def test_ties_are_random_but_a_seed_makes_them_repeatable() -> None:
    twins = [node("a", "us-east"), node("b", "us-east"), node("c", "us-east")]
    here = REGIONS["us-east"]
    firsts = {ranked_ids(twins, here, region="us-east", seed=seed)[0] for seed in range(30)}
    assert firsts == {"a", "b", "c"}
    for seed in range(5):
        assert ranked_ids(twins, here, seed=seed) == ranked_ids(twins, here, seed=seed)


def test_no_usable_holder_gives_an_empty_ranking() -> None:
    assert rank_holders([], DUBLIN, TIMEOUT_S) == []
    assert rank_holders([node("x", "eu-west", state="dead")], DUBLIN, TIMEOUT_S, region="eu-west") == []
