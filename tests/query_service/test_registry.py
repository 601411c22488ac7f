"""Health hysteresis of the node registry, with explicit clocks."""

from __future__ import annotations

import time
from dataclasses import replace

from common.events import NodeHeartbeat
from common.geo import Point
from query_service.registry import NodeInfo, NodeRegistry, is_stopping


def _node(last_seen: float, state: str = "active") -> NodeInfo:
    return NodeInfo("n1", "us-east", "set-1", "http://n1", Point(0, 0), state, "open", 100, 0, 100, 0, last_seen)


def test_down_after_one_timeout_back_only_after_a_steady_recovery() -> None:
    reg = NodeRegistry(heartbeat_timeout_s=2.0, recover_s=3.0)
    node = _node(100.0)
    assert reg.healthy(node, 100.5)
    assert reg.healthy(node, 101.9)
    assert not reg.healthy(node, 102.1)  # within one timeout of the last beat
    beat = replace(node, last_seen=103.0)  # a heartbeat comes back...
    assert not reg.healthy(beat, 103.1)  # ...but not at once (hysteresis)
    assert not reg.healthy(beat, 105.5)  # and it went silent again: the recovery starts over
    for t in (106.0, 107.5, 108.5):  # steady beats
        beat = replace(node, last_seen=t)
        assert not reg.healthy(beat, t + 0.1)
    beat = replace(node, last_seen=110.0)
    assert reg.healthy(beat, 110.1)  # 3 s of beats without a gap
    assert reg._health["n1"].flaps == 1


def test_first_sight_trusts_the_table_and_states_decide() -> None:
    reg = NodeRegistry(heartbeat_timeout_s=2.0, recover_s=30.0)
    assert reg.healthy(_node(100.0), 100.5)  # a query service starting up does not wait recover_s
    for state, serving in (("readonly", True), ("draining", True), ("dead", False)):
        reg2 = NodeRegistry(2.0, 0.0)
        assert reg2.healthy(_node(100.0, state), 100.5) is serving
    assert not NodeRegistry(2.0).healthy(_node(float("-inf")), 100.0)


def _beat(stopping: bool = False) -> NodeHeartbeat:
    return NodeHeartbeat("n1", "us-east", "set-1", 100, 0, 100, 0, 0, "t", 0.0, stopping=stopping)


def test_a_stopping_announcement_takes_the_node_out_at_once_until_it_beats_again() -> None:
    reg = NodeRegistry(heartbeat_timeout_s=10.0, recover_s=5.0)
    reg.nodes["n1"] = _node(time.monotonic())
    assert reg.healthy(reg.nodes["n1"])
    reg.on_heartbeat(_beat(stopping=True))
    node = reg.nodes["n1"]
    assert is_stopping(node) and not reg.healthy(node)  # at once, long before its heartbeat is stale
    reg.on_heartbeat(_beat())  # a restart: the new process beats
    node = reg.nodes["n1"]
    assert not is_stopping(node) and reg.healthy(node)  # back at once: its beats never lapsed, no hysteresis
