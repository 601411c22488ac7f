"""Capacity figures (per node, set and region) and the pure decisions taken from them.

Figures: capacity, used, free, objects, growth (bytes/day from usage samples) and days until full.
Honest room: a node's capacity is what it can really hold, its configured capacity or less when its file
systems have less free space (``usable_capacity``); a file system shared by several nodes (or both tiers of
one) is counted once in region and cluster totals (``pooled``), and split between the members of one set
that share it (each of them receives every image of the set). Growth is the least-squares slope of the usage
samples, shown only once they span ``forecast_min_span_s``.
Decisions: a node past the critical mark goes `readonly` (and back to `active` below it, when the
monitor set it); a node silent for ``health.dead_after_s`` is `dead`; a set with a live member past the
high-water mark is closed (and reopened below it, e.g. after deletes); when the open sets' room before
the high-water mark drops under ``provision_headroom`` of one set, or is forecast to run out within
``provision_horizon_days``, a new set is wanted. No I/O here: ``monitor.py`` reads and acts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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
    configured_capacity_bytes: int = 0  # ``capacity_bytes`` is this, or less when the disk has less room
    # The file systems under its tiers ("<machine>:<st_dev>" -> total and free bytes), shared ones counted once.
    filesystems: dict[str, dict[str, int]] = field(default_factory=dict)
    replaced: bool = False  # `dead`, and another live member holds its place in the set and region

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
    forecast_min_span_s: float = 0.0  # forecasts (growth, days until ...) appear once history_s reaches this
    cluster: GroupFigures | None = None  # every live node, shared file systems counted once

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": [{**asdict(n), "live": n.live} for n in self.nodes],
            "sets": [asdict(s) for s in self.sets],
            "regions": [asdict(r) for r in self.regions],
            "cluster": asdict(self.cluster) if self.cluster else None,
            "open_headroom_bytes": self.open_headroom_bytes,
            "set_capacity_bytes": self.set_capacity_bytes,
            "days_until_open_sets_close": self.days_until_open_sets_close,
            "history_s": self.history_s,
            "forecast_min_span_s": self.forecast_min_span_s,
        }


def growth_per_day(sample: tuple[float, float | None] | None, min_span_s: float) -> float | None:
    """Bytes/day from ``(span_s, slope)``: the least-squares slope (bytes/s) of the usage samples of the
    window, which one odd sample barely moves (first-to-last differences swing with every burst or delete);
    None until the samples span ``min_span_s``."""
    if sample is None:
        return None
    span_s, slope = sample
    if span_s is None or slope is None or span_s < min_span_s:
        return None
    return round(slope * DAY_S, 3)


def usable_capacity(capacity: int, used: int, free: int) -> int:
    """What a node can hold: its configured capacity, or less when its file systems' free space is less than
    that capacity leaves (the node's ``free`` is already the smaller of the two). Before its first heartbeat
    (nothing used, nothing free) the configured capacity stands."""
    if used == 0 and free == 0:
        return capacity
    return min(capacity, used + free) if capacity else used + free


Disks = Mapping[str, Mapping[str, int]]


def disk_groups(filesystems: Sequence[Disks]) -> list[list[int]]:
    """Indexes of ``filesystems`` grouped so that members sharing any file system are together."""
    parent = list(range(len(filesystems)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, disks in enumerate(filesystems):
        for fs_id in disks:
            if fs_id in owner:
                parent[root(i)] = root(owner[fs_id])
            else:
                owner[fs_id] = i
    groups: dict[int, list[int]] = {}
    for i in range(len(filesystems)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def pooled(members: Sequence[tuple[int, int, int, Disks]]) -> tuple[int, int, int]:
    """(capacity, used, free) of ``(capacity, used, free, filesystems)`` members, a shared file system's
    free space counted once: the free of nodes on one disk is at most that disk's free (nodes that report no
    file systems, from before migration 011, count as on disks of their own)."""
    capacity = sum(m[0] for m in members)
    used = sum(m[1] for m in members)
    free = 0
    for group in disk_groups([m[3] for m in members]):
        own = sum(members[i][2] for i in group)
        disks = {fs_id: d for i in group for fs_id, d in members[i][3].items()}
        real = sum(int(d.get("free_bytes", 0)) for d in disks.values())
        counted = min(own, real) if disks else own
        capacity -= own - counted  # the free space counted more than once was in the members' capacities
        free += counted
    return capacity, used, free


def replaced_nodes(nodes: Iterable[tuple[str, str, str, str, bool]]) -> set[str]:
    """Ids of `dead` nodes whose place (set, region) a healthy member that is not `dead` holds: their
    replacement is complete. ``nodes``: (node_id, set_id, region, state, healthy)."""
    listed = list(nodes)
    held = {(s, r) for _n, s, r, state, healthy in listed if state != "dead" and healthy}
    return {n for n, s, r, state, _h in listed if state == "dead" and (s, r) in held}


def _days(room: float, growth: float | None) -> float | None:
    if growth is None or growth <= 0:
        return None
    return round(max(room, 0) / growth, 3)


def node_figures(row: Mapping[str, Any], healthy: bool, growth: float | None, replaced: bool = False) -> NodeFigures:
    """``row``: a node row with its set (common.db.control.ControlNodeRow, or the tests' subset of it)."""
    used = int(row["used_bytes"])
    capacity = usable_capacity(int(row["capacity_bytes"]), used, int(row["free_bytes"]))
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
        configured_capacity_bytes=int(row["capacity_bytes"]),
        filesystems=dict(row.get("filesystems") or {}),
        replaced=replaced,
    )


def _sum_growth(nodes: Iterable[NodeFigures]) -> float | None:
    rates = [n.growth_bytes_per_day for n in nodes if n.growth_bytes_per_day is not None]
    return sum(rates) if rates else None


def _set_rooms(members: list[NodeFigures]) -> list[int]:
    """Each member's room for the set: its free space, but at most its share of the disk's real free space
    when members of the set share a disk (each of them writes every image of the set there)."""
    rooms = [n.free_bytes for n in members]
    for group in disk_groups([n.filesystems for n in members]):
        if len(group) > 1:
            disks = {fs_id: d for i in group for fs_id, d in members[i].filesystems.items()}
            share = sum(int(d.get("free_bytes", 0)) for d in disks.values()) // len(group)
            for i in group:
                rooms[i] = min(rooms[i], share)
    return rooms


def _pooled_group(name: str, members: list[NodeFigures]) -> GroupFigures:
    capacity, used, free = pooled([(n.capacity_bytes, n.used_bytes, n.free_bytes, n.filesystems) for n in members])
    growth = _sum_growth(members)
    return GroupFigures(
        name=name,
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


def build_report(
    nodes: list[NodeFigures],
    set_states: dict[str, str],
    cap: CapacitySettings,
    history_s: float = 0.0,
) -> Report:
    sets = []
    for set_id, state in set_states.items():
        members = [n for n in nodes if n.set_id == set_id and n.live]
        if not members:
            continue
        # Every member holds (or will hold, once it has caught up) every image: the set is as full as its
        # fullest member's data on its smallest disk. Per-member ratios would miss a lagging small member
        # (down, or backfilling) that later receives everything.
        rooms = _set_rooms(members)
        capacity = min(n.capacity_bytes - n.free_bytes + room for n, room in zip(members, rooms, strict=True))
        used = max(n.used_bytes for n in members)
        growth = max((n.growth_bytes_per_day for n in members if n.growth_bytes_per_day is not None), default=None)
        # Never more than the real room: a member's free space bounds its share of the set's growth.
        headroom = min(int(cap.high_water * capacity) - used, min(rooms))
        sets.append(
            GroupFigures(
                name=set_id,
                state=state,
                nodes=tuple(n.node_id for n in members),
                capacity_bytes=capacity,
                used_bytes=used,
                free_bytes=min(rooms),
                objects=max(n.objects for n in members),
                used_ratio=round(used / capacity, 4) if capacity else 0.0,
                growth_bytes_per_day=growth,
                days_until_full=_days(min(rooms), growth),
                headroom_bytes=max(headroom, 0),
                days_until_closed=_days(headroom, growth),
            )
        )
    regions = []
    for region in sorted({n.region for n in nodes}):
        members = [n for n in nodes if n.region == region and n.live]
        if members:
            regions.append(_pooled_group(region, members))
    live = [n for n in nodes if n.live]
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
        cap.forecast_min_span_s,
        _pooled_group("cluster", live) if live else None,
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
    # Nothing registered yet (no region layout to copy), or a node not yet heard from (its free space is
    # unknown, not zero): no provisioning decision.
    if not report.sets or any(n.live and n.heartbeat_age_s is None for n in report.nodes):
        return out
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
