"""Capacity figures (per node, set and region) and the pure decisions taken from them.

Figures: capacity, used, free, objects, growth (bytes/day from usage samples) and days until full.
Decisions: a node past the critical mark goes `readonly` (and back to `active` below it, when the
monitor set it); a node silent for ``health.dead_after_s`` is `dead`; a set with a live member past the
high-water mark is closed (and reopened below it, e.g. after deletes); when the open sets' room before
the high-water mark drops under ``provision_headroom`` of one set, or is forecast to run out within
``provision_horizon_days``, a new set is wanted. No I/O here: ``monitor.py`` reads and acts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from common.config import CapacitySettings, HealthSettings

DAY_S = 86400.0
REOPEN_MARGIN = 0.05  # hysteresis: a closed set reopens (a readonly node becomes active) this far below the mark


@dataclass(frozen=True)
class NodeFigures:
    node_id: str
    region: str
    set_id: str
    set_state: str
    state: str
    state_set_by: str
    healthy: bool
    heartbeat_age_s: float | None
    capacity_bytes: int
    used_bytes: int
    free_bytes: int
    objects: int
    used_ratio: float
    growth_bytes_per_day: float | None
    days_until_full: float | None
    lat: float = 0.0
    lon: float = 0.0
    # Per storage tier (hot; cold when the node has one): capacity, used, free bytes and originals.
    tiers: dict[str, dict[str, int]] = field(default_factory=dict)
    variant_bytes: int = 0  # the node's cache of variants (in the hot tier)

    @property
    def live(self) -> bool:
        return self.state != "dead"


@dataclass(frozen=True)
class GroupFigures:
    """A set or a region."""

    name: str
    state: str
    nodes: tuple[str, ...]
    capacity_bytes: int
    used_bytes: int
    free_bytes: int
    objects: int
    used_ratio: float
    growth_bytes_per_day: float | None
    days_until_full: float | None
    headroom_bytes: int = 0  # sets: room before the high-water mark closes it
    days_until_closed: float | None = None


@dataclass(frozen=True)
class Report:
    nodes: tuple[NodeFigures, ...]
    sets: tuple[GroupFigures, ...]
    regions: tuple[GroupFigures, ...]
    open_headroom_bytes: int
    set_capacity_bytes: int
    days_until_open_sets_close: float | None
    history_s: float = 0.0  # span of the usage samples behind the growth figures

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": [{**asdict(n), "live": n.live} for n in self.nodes],
            "sets": [asdict(s) for s in self.sets],
            "regions": [asdict(r) for r in self.regions],
            "open_headroom_bytes": self.open_headroom_bytes,
            "set_capacity_bytes": self.set_capacity_bytes,
            "days_until_open_sets_close": self.days_until_open_sets_close,
            "history_s": self.history_s,
        }


def growth_per_day(sample: tuple[float, int, int] | None, min_span_s: float) -> float | None:
    """Bytes/day between the oldest and newest sample of the window; None without enough history."""
    if sample is None:
        return None
    span_s, first, last = sample
    if span_s is None or span_s < min_span_s:
        return None
    return (last - first) / span_s * DAY_S


def _days(room: float, growth: float | None) -> float | None:
    if growth is None or growth <= 0:
        return None
    return round(max(room, 0) / growth, 3)


def node_figures(row: Mapping[str, Any], healthy: bool, growth: float | None) -> NodeFigures:
    """``row``: a node row with its set (common.db.control.ControlNodeRow, or the tests' subset of it)."""
    capacity = int(row["capacity_bytes"])
    used = int(row["used_bytes"])
    return NodeFigures(
        node_id=row["node_id"],
        region=row["region"],
        set_id=row["set_id"],
        set_state=row["set_state"],
        state=row["state"],
        state_set_by=row.get("state_set_by", "auto"),
        healthy=healthy,
        heartbeat_age_s=row["heartbeat_age_s"],
        capacity_bytes=capacity,
        used_bytes=used,
        free_bytes=int(row["free_bytes"]),
        objects=int(row["objects"]),
        used_ratio=round(used / capacity, 4) if capacity else 0.0,
        growth_bytes_per_day=growth,
        days_until_full=_days(int(row["free_bytes"]), growth),
        lat=row["lat"],
        lon=row["lon"],
        tiers=dict(row.get("tiers") or {}),
        variant_bytes=int(row.get("variant_bytes") or 0),
    )


def _sum_growth(nodes: Iterable[NodeFigures]) -> float | None:
    rates = [n.growth_bytes_per_day for n in nodes if n.growth_bytes_per_day is not None]
    return sum(rates) if rates else None


def build_report(
    nodes: list[NodeFigures], set_states: dict[str, str], cap: CapacitySettings, history_s: float = 0.0
) -> Report:
    sets = []
    for set_id, state in set_states.items():
        members = [n for n in nodes if n.set_id == set_id and n.live]
        if not members:
            continue
        # Every member holds (or will hold, once it has caught up) every image: the set is as full as its
        # fullest member's data on its smallest disk. Per-member ratios would miss a lagging small member
        # (down, or backfilling) that later receives everything.
        capacity = min(n.capacity_bytes for n in members)
        used = max(n.used_bytes for n in members)
        growth = max((n.growth_bytes_per_day for n in members if n.growth_bytes_per_day is not None), default=None)
        headroom = int(cap.high_water * capacity) - used
        sets.append(
            GroupFigures(
                name=set_id,
                state=state,
                nodes=tuple(n.node_id for n in members),
                capacity_bytes=capacity,
                used_bytes=used,
                free_bytes=min(n.free_bytes for n in members),
                objects=max(n.objects for n in members),
                used_ratio=round(used / capacity, 4) if capacity else 0.0,
                growth_bytes_per_day=growth,
                days_until_full=_days(min(n.free_bytes for n in members), growth),
                headroom_bytes=max(headroom, 0),
                days_until_closed=_days(headroom, growth),
            )
        )
    regions = []
    for region in sorted({n.region for n in nodes}):
        members = [n for n in nodes if n.region == region and n.live]
        if not members:
            continue
        capacity = sum(n.capacity_bytes for n in members)
        used = sum(n.used_bytes for n in members)
        growth = _sum_growth(members)
        free = sum(n.free_bytes for n in members)
        regions.append(
            GroupFigures(
                name=region,
                state="live",
                nodes=tuple(n.node_id for n in members),
                capacity_bytes=capacity,
                used_bytes=used,
                free_bytes=free,
                objects=sum(n.objects for n in members),
                used_ratio=round(used / capacity, 4) if capacity else 0.0,
                growth_bytes_per_day=growth,
                days_until_full=_days(free, growth),
            )
        )
    open_sets = [s for s in sets if s.state == "open"]
    headroom = sum(s.headroom_bytes for s in open_sets)
    growth = sum(s.growth_bytes_per_day or 0 for s in open_sets)
    set_capacity = max((s.capacity_bytes for s in sets), default=0)
    return Report(
        tuple(nodes),
        tuple(sets),
        tuple(regions),
        headroom,
        set_capacity,
        _days(headroom, growth if growth > 0 else None),
        history_s,
    )


@dataclass(frozen=True)
class Decisions:
    node_states: list[tuple[str, str, str]] = field(default_factory=list)  # (node_id, new state, reason)
    set_states: list[tuple[str, str, str]] = field(default_factory=list)  # (set_id, open|closed, reason)
    provision_reason: str | None = None
    by_forecast: bool = False  # wanted because of the growth forecast (not the room left now)


def decide(report: Report, cap: CapacitySettings, health: HealthSettings) -> Decisions:
    out = Decisions()
    for n in report.nodes:
        age = n.heartbeat_age_s
        silent = age is None or age > health.dead_after_s
        if n.state in ("active", "readonly") and silent and age is not None:
            out.node_states.append((n.node_id, "dead", f"no heartbeat for {age:.0f}s"))
        elif n.state == "dead" and n.state_set_by == "auto" and not silent:
            out.node_states.append((n.node_id, "active", "heartbeats again"))
        elif n.state == "active" and n.capacity_bytes and n.used_ratio >= cap.critical:
            out.node_states.append((n.node_id, "readonly", f"{n.used_ratio:.0%} used >= critical {cap.critical:.0%}"))
        elif n.state == "readonly" and n.state_set_by == "auto" and n.used_ratio < cap.critical - REOPEN_MARGIN:
            out.node_states.append((n.node_id, "active", f"{n.used_ratio:.0%} used, below critical again"))
    closing = set()
    for s in report.sets:
        if s.state == "open" and s.used_ratio >= cap.high_water:
            closing.add(s.name)
            out.set_states.append(
                (s.name, "closed", f"a member is {s.used_ratio:.0%} full >= high water {cap.high_water:.0%}")
            )
        elif s.state == "closed" and s.used_ratio < cap.high_water - REOPEN_MARGIN:
            out.set_states.append((s.name, "open", f"{s.used_ratio:.0%} used, below high water again"))
    open_sets = [s for s in report.sets if s.state == "open" and s.name not in closing]
    if not report.sets:
        return out  # nothing registered yet: nothing to copy a region layout from
    headroom = sum(s.headroom_bytes for s in open_sets)
    wanted = cap.provision_headroom * report.set_capacity_bytes
    if not open_sets:
        reason = "no open set left for new uploads"
    elif headroom < wanted:
        reason = f"open sets' headroom {headroom} B < {cap.provision_headroom:.0%} of a set ({int(wanted)} B)"
    elif (
        report.days_until_open_sets_close is not None
        and report.history_s >= cap.forecast_min_span_s
        and report.days_until_open_sets_close < cap.provision_horizon_days
    ):
        reason = (
            f"open sets forecast to close in {report.days_until_open_sets_close:.1f} days"
            f" < horizon {cap.provision_horizon_days:g}"
        )
    else:
        reason = None
    return Decisions(out.node_states, out.set_states, reason, by_forecast=bool(reason and "forecast" in reason))
