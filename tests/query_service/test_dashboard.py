"""The dashboard document and the heartbeat rates, from plain values."""

from __future__ import annotations

import dataclasses
import json
import time

from common.events import NodeHeartbeat
from common.geo import Point
from query_service.cluster_stats import Backlog, ClusterStats
from query_service.dashboard import build_dashboard
from query_service.history import History, sample
from query_service.registry import NodeInfo


def _node(node_id: str, region: str, set_id: str, used: int, capacity: int = 1000) -> NodeInfo:
    return NodeInfo(
        node_id,
        region,
        set_id,
        f"http://{node_id}",
        Point(1.0, 2.0),
        "active",
        "open",
        capacity,
        used,
        capacity - used,
        used // 10,
        time.monotonic(),
    )


def _beat(node_id: str, requests: int, sent: int, uploads: int = 0) -> NodeHeartbeat:
    return NodeHeartbeat(
        node_id=node_id,
        region="r",
        set_id="s",
        capacity_bytes=0,
        used_bytes=0,
        free_bytes=0,
        objects=0,
        in_flight=0,
        version_str="x",
        sent_at=0.0,
        requests_total=requests,
        bytes_sent_total=sent,
        uploads_total=uploads,
        replication_lag_p50_s=0.2,
        replication_lag_max_s=0.9,
    )


def test_rates_come_from_heartbeat_totals_and_survive_a_restart() -> None:
    stats = ClusterStats()
    stats.on_heartbeat(_beat("a", 100, 10_000, 4), now=10.0)
    stats.on_heartbeat(_beat("a", 150, 30_000, 6), now=20.0)
    act = stats.activity("a", now=20.0)
    assert (act.requests_per_s, act.bytes_per_s, act.uploads_per_s) == (5.0, 2000.0, 0.2)
    assert (act.replication_lag_p50_s, act.replication_lag_max_s) == (0.2, 0.9)
    stats.on_heartbeat(_beat("a", 3, 300), now=22.0)  # restarted: totals began again
    assert stats.activity("a", now=22.0).requests_per_s == 0.0
    stats.on_heartbeat(_beat("a", 13, 300), now=24.0)
    assert stats.activity("a", now=24.0).requests_per_s == 5.0
    assert stats.activity("a", now=100.0).requests_per_s == 0.0  # silent for long: no stale rate
    assert stats.activity("unknown").requests_per_s == 0.0


def test_document_groups_nodes_and_sums_what_they_report() -> None:
    nodes = [
        _node("us-1", "us", "set-1", 800),
        _node("eu-1", "eu", "set-1", 200),
        _node("us-2", "us", "set-2", 100),
        _node("eu-2", "eu", "set-2", 100),
    ]
    stats = ClusterStats()
    events = [{"kind": "new_set", "state": "planned"}]
    stats.backlog = Backlog({"eu-1": 4}, 12.5, 3, events, read_at=time.monotonic())
    nodes[3] = dataclasses.replace(nodes[3], stopped_at=time.monotonic())
    doc = build_dashboard(nodes, lambda n: n.node_id != "eu-1", lambda n: 1.0, stats)
    json.dumps(doc, allow_nan=False)  # strict JSON: a browser's JSON.parse refuses Infinity and NaN
    assert [n["node_id"] for n in doc["nodes"] if n["stopping"]] == ["eu-2"]
    s = doc["summary"]
    assert (s["nodes"], s["healthy_nodes"], s["regions"], s["sets"]) == (4, 3, 2, 2)
    assert (s["used_bytes"], s["capacity_bytes"], s["used_ratio"]) == (1200, 4000, 0.3)
    assert (s["pending_replicas"], s["oldest_pending_s"], s["under_replicated"]) == (4, 12.5, 3)
    assert doc["events"] == [{"kind": "new_set", "state": "planned"}]
    assert doc["stats_age_s"] is not None  # the backlog was just read
    by_set = {x["set_id"]: x for x in doc["sets"]}
    assert by_set["set-1"]["used_bytes"] == 1000 and by_set["set-1"]["healthy_nodes"] == 1
    assert by_set["set-1"]["node_ids"] == ["eu-1", "us-1"]
    eu1 = next(n for n in doc["nodes"] if n["node_id"] == "eu-1")
    assert (eu1["healthy"], eu1["pending_replicas"], eu1["used_ratio"], eu1["days_until_full"]) == (False, 4, 0.2, None)
    regions = {r["region"]: r for r in doc["regions"]}
    assert regions["us"]["used_bytes"] == 900 and regions["eu"]["nodes"] == 2


@dataclasses.dataclass(frozen=True)
class NodeWithForecast(NodeInfo):
    days_until_full: float | None = None


def test_fields_the_control_plane_adds_show_up() -> None:
    base = dataclasses.asdict(_node("a", "us", "set-1", 500))
    base["point"] = Point(1.0, 2.0)
    nodes = [
        NodeWithForecast(**base, days_until_full=6.5),
        NodeWithForecast(**{**base, "node_id": "b", "region": "eu"}, days_until_full=9.0),
    ]
    doc = build_dashboard(nodes, lambda n: True, lambda n: 0.5, ClusterStats())
    assert {n["node_id"]: n["days_until_full"] for n in doc["nodes"]} == {"a": 6.5, "b": 9.0}
    assert doc["sets"][0]["days_until_full"] == 6.5 and doc["summary"]["days_until_full"] == 6.5


def test_capacity_monitor_figures_fill_the_forecasts() -> None:
    stats = ClusterStats()
    stats.capacity = {
        "nodes": [{"node_id": "us-1", "days_until_full": 3.0, "growth_bytes_per_day": 100.0}],
        "sets": [{"name": "set-1", "days_until_closed": 1.5, "headroom_bytes": 10}],
        "days_until_open_sets_close": 1.5,
    }
    nodes = [_node("us-1", "us", "set-1", 800), _node("eu-1", "eu", "set-1", 200)]
    doc = build_dashboard(nodes, lambda n: True, lambda n: 1.0, stats)
    by_id = {n["node_id"]: n for n in doc["nodes"]}
    assert (by_id["us-1"]["days_until_full"], by_id["us-1"]["growth_bytes_per_day"]) == (3.0, 100.0)
    assert (by_id["eu-1"]["days_until_full"], by_id["eu-1"]["growth_bytes_per_day"]) == (None, None)
    (only_set,) = doc["sets"]
    assert (only_set["days_until_full"], only_set["days_until_closed"], only_set["headroom_bytes"]) == (3.0, 1.5, 10)
    assert doc["summary"]["days_until_full"] == 3.0 and doc["summary"]["days_until_open_sets_close"] == 1.5


def test_the_history_and_its_forecast_ride_along_when_kept() -> None:
    stats = ClusterStats()
    stats.capacity = {"nodes": [{"node_id": "us-1", "days_until_full": 3.0, "growth_bytes_per_day": 100.0}]}
    nodes = [_node("us-1", "us", "set-1", 800), _node("eu-1", "eu", "set-1", 200)]
    assert "history" not in build_dashboard(nodes, lambda n: True, lambda n: 1.0, stats)
    history = History(window_s=60, points=6)
    history.record(1_800_000_000.0, sample({"used_bytes": 1000, "requests_per_s": 2.0}))
    doc = build_dashboard(nodes, lambda n: True, lambda n: 1.0, stats, history)
    assert doc["history"]["series"]["used_bytes"] == [1000.0]
    assert doc["history"]["forecast"] == {"growth_bytes_per_day": 100.0, "days_until_full": 3.0}
