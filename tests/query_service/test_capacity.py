"""Pure capacity figures and decisions, table-driven."""

from __future__ import annotations

from typing import Any

from common.config import CapacitySettings, HealthSettings
from query_service.capacity import (
    DAY_S,
    build_report,
    decide,
    growth_per_day,
    node_figures,
    pooled,
    replaced_nodes,
    usable_capacity,
)

CAP = CapacitySettings(high_water=0.8, critical=0.95, provision_headroom=0.25, provision_horizon_days=7)
HEALTH = HealthSettings(heartbeat_timeout_s=10, dead_after_s=600)


def _row(
    node_id: str,
    set_id: str,
    used: int,
    capacity: int = 1000,
    state: str = "active",
    set_state: str = "open",
    age: float | None = 1.0,
    set_by: str = "auto",
) -> dict[str, Any]:
    return {
        "node_id": node_id,
        "region": node_id.rsplit("-", 1)[0],
        "set_id": set_id,
        "set_state": set_state,
        "state": state,
        "state_set_by": set_by,
        "heartbeat_age_s": age,
        "capacity_bytes": capacity,
        "used_bytes": used,
        "free_bytes": capacity - used,
        "objects": used // 100,
        "lat": 0.0,
        "lon": 0.0,
    }


def _report(rows: list[dict[str, Any]], growth: dict[str, float] | None = None, history_s: float = 7200.0) -> Any:
    nodes = [node_figures(r, True, (growth or {}).get(r["node_id"])) for r in rows]
    return build_report(nodes, {r["set_id"]: r["set_state"] for r in rows}, CAP, history_s)


def test_growth_needs_enough_history() -> None:
    assert growth_per_day(None, 60) is None
    assert growth_per_day((30.0, 100 / 3600), 60) is None
    assert growth_per_day((3600.0, None), 60) is None  # a single sample has no slope
    assert growth_per_day((3600.0, 100 / 3600), 60) == 100 * 24


def test_figures_per_set_and_region() -> None:
    rows = [
        _row("us-east-1", "set-1", 500),
        _row("eu-west-1", "set-1", 700),
        _row("us-east-2", "set-2", 100),
        _row("eu-west-2", "set-2", 100),
    ]
    report = _report(rows, growth={"us-east-1": 100.0, "eu-west-1": 100.0})
    s1 = next(s for s in report.sets if s.name == "set-1")
    assert s1.used_bytes == 700 and s1.free_bytes == 300 and s1.headroom_bytes == 100
    assert s1.days_until_full == 3.0 and s1.days_until_closed == 1.0
    east = next(r for r in report.regions if r.name == "us-east")
    assert east.capacity_bytes == 2000 and east.used_bytes == 600 and east.days_until_full == 14.0
    assert report.open_headroom_bytes == 100 + 700
    node = report.nodes[0]
    assert node.days_until_full == 5.0 and node.used_ratio == 0.5


def test_marks_close_sets_and_make_nodes_readonly_and_dead() -> None:
    rows = [
        _row("us-east-1", "set-1", 960),
        _row("eu-west-1", "set-1", 810),
        _row("us-east-2", "set-2", 10),
        _row("eu-west-2", "set-2", 10, age=700.0),
    ]
    d = decide(_report(rows), CAP, HEALTH)
    assert ("us-east-1", "readonly") in [(n, s) for n, s, _ in d.node_states]
    assert ("eu-west-2", "dead") in [(n, s) for n, s, _ in d.node_states]
    assert [(s, st) for s, st, _ in d.set_states] == [("set-1", "closed")]
    assert d.provision_reason is None  # set-2 still has room


def test_hysteresis_and_operator_states_are_kept() -> None:
    rows = [
        _row("us-east-1", "set-1", 930, state="readonly"),  # below critical, not far enough: stays
        _row("eu-west-1", "set-1", 500, state="readonly", set_by="operator"),  # an operator's: kept
        _row("us-east-2", "set-2", 100, state="readonly"),
        _row("eu-west-2", "set-2", 100, state="dead", set_by="operator"),
    ]
    d = decide(_report(rows), CAP, HEALTH)
    assert [(n, s) for n, s, _ in d.node_states] == [("us-east-2", "active")]
    rows = [_row("us-east-1", "set-1", 760, set_state="closed"), _row("us-east-2", "set-2", 100, set_state="closed")]
    d = decide(_report(rows), CAP, HEALTH)
    assert [(s, st) for s, st, _ in d.set_states] == [("set-2", "open")]  # 76% is within the margin


def test_provisioning_reasons() -> None:
    closed = [_row("us-east-1", "set-1", 900, set_state="closed")]
    assert "no open set" in (decide(_report(closed), CAP, HEALTH).provision_reason or "")
    tight = [_row("us-east-1", "set-1", 600)]  # 200 B of headroom < 25 % of 1000
    assert "headroom" in (decide(_report(tight), CAP, HEALTH).provision_reason or "")
    roomy = [_row("us-east-1", "set-1", 100)]
    assert decide(_report(roomy), CAP, HEALTH).provision_reason is None
    fast = decide(_report(roomy, growth={"us-east-1": 700 / 3}), CAP, HEALTH)  # 700 B of room, gone in 3 days
    assert fast.by_forecast and "forecast" in (fast.provision_reason or "")
    young = decide(_report(roomy, growth={"us-east-1": 700 / 3}, history_s=60), CAP, HEALTH)
    assert young.provision_reason is None  # a minute of history is shown, but not acted upon
    assert decide(_report([]), CAP, HEALTH).provision_reason is None  # an empty cluster: nothing to copy
    # Registered, not heard from yet: its row says 0 B free, which is not known -- no provisioning on that.
    unheard = [_row("us-east-1", "set-1", 0), {**_row("eu-west-1", "set-1", 0, age=None), "free_bytes": 0}]
    assert decide(_report(unheard), CAP, HEALTH).provision_reason is None
    assert "headroom" in (
        decide(_report([*unheard[:1], {**unheard[1], "heartbeat_age_s": 1.0}]), CAP, HEALTH).provision_reason or ""
    )
    assert DAY_S == 86400


def test_a_lagging_small_member_counts_with_the_data_it_will_receive() -> None:
    """eu-west-1 (a 500 B disk) was down while us-east-1 took 450 B: once it catches up it holds 450 B too, so
    the set is 90 % full now, not 45 % (the fullest member's ratio)."""
    rows = [_row("us-east-1", "set-1", 450, capacity=1000), _row("eu-west-1", "set-1", 0, capacity=500)]
    report = _report(rows)
    s1 = report.sets[0]
    assert s1.capacity_bytes == 500 and s1.used_bytes == 450 and s1.used_ratio == 0.9 and s1.headroom_bytes == 0
    assert [(s, st) for s, st, _ in decide(report, CAP, HEALTH).set_states] == [("set-1", "closed")]
    rows = [_row("us-east-1", "set-1", 300, capacity=1000), _row("eu-west-1", "set-1", 0, capacity=500)]
    s1 = _report(rows).sets[0]
    assert s1.used_ratio == 0.6 and s1.headroom_bytes == 100  # 80 % of 500 B minus 300 B


DISK = {"host-a:2049": {"total_bytes": 10_000, "free_bytes": 900}}


def _on_disk(row: dict[str, Any], disks: dict[str, dict[str, int]], free: int) -> dict[str, Any]:
    return {**row, "free_bytes": free, "filesystems": disks}


def test_a_node_holds_no_more_than_its_disk_has_free() -> None:
    assert usable_capacity(1000, 100, 900) == 1000  # the configured capacity binds
    assert usable_capacity(1000, 100, 300) == 400  # the disk is fuller than the capacity says
    assert usable_capacity(0, 100, 300) == 400  # no configured capacity: the disk's room
    assert usable_capacity(1000, 0, 0) == 1000  # before its first heartbeat
    node = node_figures(_on_disk(_row("us-east-1", "set-1", 100), DISK, 300), True, None)
    assert (node.capacity_bytes, node.configured_capacity_bytes, node.used_ratio) == (400, 1000, 0.25)


def test_a_shared_disk_counts_once_in_totals_and_splits_among_one_sets_members() -> None:
    """Three nodes of one set on one disk with 900 B free (each may hold 1000 B by configuration): the cluster
    has 900 B free, not 2700; the set's room is 300 B per member (each image lands on all three)."""
    rows = [_on_disk(_row(n, "set-1", 100), DISK, 900) for n in ("us-east-1", "eu-west-1", "ap-south-1")]
    report = _report(rows, growth={"us-east-1": 30.0, "eu-west-1": 30.0, "ap-south-1": 30.0})
    assert report.cluster is not None
    assert (report.cluster.free_bytes, report.cluster.used_bytes, report.cluster.capacity_bytes) == (900, 300, 1200)
    s1 = report.sets[0]
    assert s1.free_bytes == 300 and s1.capacity_bytes == 400 and s1.used_ratio == 0.25
    assert s1.headroom_bytes == 220 <= s1.free_bytes  # 80 % of 400 B minus 100 B
    assert s1.days_until_full == 10.0  # 300 B of its share at 30 B/day
    assert all(r.free_bytes == 900 for r in report.regions)  # one node per region: its view of the disk
    # On disks of their own the same figures add up.
    apart = [{**r, "filesystems": {f"host-{i}:1": DISK["host-a:2049"]}} for i, r in enumerate(rows)]
    report = _report(apart)
    assert report.cluster is not None and report.cluster.free_bytes == 2700 and report.sets[0].free_bytes == 900
    # A roomy shared disk (90 kB free) under small configured capacities: the capacities bind, nothing is split.
    roomy = {"host-a:2049": {"total_bytes": 100_000, "free_bytes": 90_000}}
    report = _report([_on_disk(r, roomy, 900) for r in rows])
    assert report.cluster is not None and report.cluster.free_bytes == 2700
    assert report.sets[0].free_bytes == 900 and report.sets[0].capacity_bytes == 1000


def test_pooled_joins_nodes_that_share_any_disk() -> None:
    hot = {"m:1": {"total_bytes": 5000, "free_bytes": 500}}
    cold = {"m:2": {"total_bytes": 5000, "free_bytes": 700}}
    both = {**hot, **cold}
    # a: hot only on m:1; b: hot on m:1 and cold on m:2 (free 500 + 700 counted); c: no report (old node).
    assert pooled([(600, 100, 500, hot), (1400, 200, 1200, both), (1000, 0, 1000, {})]) == (2500, 300, 2200)
    assert pooled([]) == (0, 0, 0)


def test_a_replaced_node_is_the_dead_one_whose_place_a_healthy_member_holds() -> None:
    nodes = [
        ("eu-west-1", "set-1", "eu-west", "dead", False),
        ("eu-west-r2", "set-1", "eu-west", "active", True),
        ("us-east-1", "set-1", "us-east", "dead", False),  # nobody took its place: still down
        ("ap-1", "set-1", "ap", "dead", False),
        ("ap-r2", "set-1", "ap", "active", False),  # its replacement is not up yet: not complete
    ]
    assert replaced_nodes(nodes) == {"eu-west-1"}
