"""The operator dashboard's data: one JSON document built from memory (the node registry and the
cluster stats gathered in the background), so a dashboard left open costs no database queries.

Node entries carry every field of the registry's NodeInfo (so fields the control plane adds, such
as days until full, appear without a change here) plus health, heartbeat age, usage ratio, backlog
and rates. The page (static/dashboard.html) reads fields defensively and shows what is present.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from query_service.capacity import pooled, replaced_nodes, usable_capacity
from query_service.cluster_stats import ClusterStats
from query_service.history import History
from query_service.registry import NodeInfo, is_stopping

# Monotonic clock readings (meaningless outside this process, and -inf for "never") stay out of the JSON.
HIDDEN_NODE_FIELDS = ("point", "last_seen", "stopped_at")


def _ratio(used: float, capacity: float) -> float | None:
    return round(used / capacity, 4) if capacity > 0 else None


def _sum(items: Iterable[dict[str, Any]], key: str) -> float:
    return sum(float(item.get(key) or 0) for item in items)


def node_entry(node: NodeInfo, healthy: bool, heartbeat_age_s: float | None, stats: ClusterStats) -> dict[str, Any]:
    entry = {f.name: getattr(node, f.name) for f in dataclasses.fields(node) if f.name not in HIDDEN_NODE_FIELDS}
    entry.update(
        lat=node.point.lat,
        lon=node.point.lon,
        healthy=healthy,
        stopping=is_stopping(node),
        heartbeat_age_s=None if heartbeat_age_s is None else round(heartbeat_age_s, 2),
        # What it can really hold: its configured capacity, or less when the disk has less room.
        capacity_bytes=usable_capacity(node.capacity_bytes, node.used_bytes, node.free_bytes),
        configured_capacity_bytes=node.capacity_bytes,
        used_ratio=_ratio(node.used_bytes, usable_capacity(node.capacity_bytes, node.used_bytes, node.free_bytes)),
        pending_replicas=stats.backlog.pending_by_node.get(node.node_id, 0),
        backfill_replicas=stats.backlog.backfill_by_node.get(node.node_id, 0),
    )
    activity = dataclasses.asdict(stats.activity(node.node_id))
    entry.update({k: round(v, 3) if isinstance(v, float) else v for k, v in activity.items()})
    entry.setdefault("days_until_full", None)
    return entry


def _group(nodes: list[dict[str, Any]], key: str) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for n in nodes:
        groups.setdefault(str(n[key]), []).append(n)
    return groups


def _totals(members: list[dict[str, Any]]) -> dict[str, Any]:
    # A disk shared by several nodes counts once (query_service.capacity.pooled).
    capacity, used, free = pooled(
        [
            (int(n["capacity_bytes"]), int(n["used_bytes"]), int(n["free_bytes"]), n.get("filesystems") or {})
            for n in members
        ]
    )
    return {
        "nodes": len(members),
        "healthy_nodes": sum(1 for n in members if n["healthy"]),
        "capacity_bytes": int(capacity),
        "used_bytes": int(used),
        "free_bytes": int(free),
        "objects": int(_sum(members, "objects")),
        "used_ratio": _ratio(used, capacity),
        "tiers": _tier_totals(members),
        "variant_bytes": int(_sum(members, "variant_bytes")),
    }


def _tier_totals(members: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per storage tier, the sums over the members that have it (a node without a cold tier adds none)."""
    out: dict[str, dict[str, int]] = {}
    for n in members:
        for tier, figures in (n.get("tiers") or {}).items():
            acc = out.setdefault(tier, {})
            for key, value in figures.items():
                acc[key] = acc.get(key, 0) + int(value)
    return out


def _min_days(members: list[dict[str, Any]]) -> float | None:
    days = [float(n["days_until_full"]) for n in members if n.get("days_until_full") is not None]
    return min(days) if days else None


def _by_name(items: Any, key: str) -> dict[str, dict[str, Any]]:
    return {str(i[key]): i for i in items or () if isinstance(i, dict) and key in i}


def build_dashboard(
    nodes: Iterable[NodeInfo],
    healthy: Callable[[NodeInfo], bool],
    heartbeat_age: Callable[[NodeInfo], float | None],
    stats: ClusterStats,
    history: History | None = None,
) -> dict[str, Any]:
    capacity = stats.capacity or {}
    forecast = _by_name(capacity.get("nodes"), "node_id")
    everyone = [
        node_entry(n, healthy(n), heartbeat_age(n), stats)
        for n in sorted(nodes, key=lambda n: (n.set_id, n.region, n.node_id))
    ]
    # A replaced node (dead, its place held by a healthy successor) is history: out of the members, the
    # health counts and the totals, listed apart.
    gone = replaced_nodes((n["node_id"], n["set_id"], n["region"], n["state"], n["healthy"]) for n in everyone)
    entries = [n for n in everyone if n["node_id"] not in gone]
    for entry in entries:  # the capacity monitor's figures, when it has any for this node
        figures = forecast.get(entry["node_id"], {})
        for key in ("days_until_full", "growth_bytes_per_day"):
            if entry.get(key) is None:
                entry[key] = figures.get(key)
    regions = [{"region": region, **_totals(members)} for region, members in sorted(_group(entries, "region").items())]
    set_forecast = _by_name(capacity.get("sets"), "name")
    sets = []
    for set_id, members in sorted(_group(entries, "set_id").items()):
        figures = set_forecast.get(set_id, {})
        sets.append(
            {
                "set_id": set_id,
                "state": members[0].get("set_state"),
                "regions": sorted(str(n["region"]) for n in members),
                "node_ids": [n["node_id"] for n in members],
                "days_until_full": _min_days(members),
                "days_until_closed": figures.get("days_until_closed"),
                "headroom_bytes": figures.get("headroom_bytes"),
                **_totals(members),
            }
        )
    backlog = stats.backlog
    lags = [n["replication_lag_max_s"] for n in entries if n.get("replication_lag_max_s") is not None]
    p50s = [n["replication_lag_p50_s"] for n in entries if n.get("replication_lag_p50_s") is not None]
    stats_age = time.monotonic() - backlog.read_at
    summary = {
        **_totals(entries),
        "regions": len(regions),
        "sets": len(sets),
        "requests_per_s": round(_sum(entries, "requests_per_s"), 3),
        "bytes_per_s": round(_sum(entries, "bytes_per_s"), 1),
        "uploads_per_s": round(_sum(entries, "uploads_per_s"), 3),
        "replicated_per_s": round(_sum(entries, "replicated_per_s"), 3),
        "backfilled_per_s": round(_sum(entries, "backfilled_per_s"), 3),
        "pending_replicas": sum(backlog.pending_by_node.values()),
        "backfill_replicas": sum(backlog.backfill_by_node.values()),
        "oldest_pending_s": None if backlog.oldest_pending_s is None else round(backlog.oldest_pending_s, 1),
        "under_replicated": backlog.under_replicated,
        "replication_lag_p50_s": round(max(p50s), 3) if p50s else None,
        "replication_lag_max_s": round(max(lags), 3) if lags else None,
        "days_until_full": _min_days(entries),
        "days_until_open_sets_close": capacity.get("days_until_open_sets_close"),
        # The span of usage history behind the forecasts, which appear once it reaches forecast_min_span_s.
        "forecast_history_s": capacity.get("history_s"),
        "forecast_min_span_s": capacity.get("forecast_min_span_s"),
    }
    doc: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "stats_age_s": None if stats_age == float("inf") else round(stats_age, 1),
        "summary": summary,
        "regions": regions,
        "sets": sets,
        "nodes": entries,
        "replaced_nodes": [n["node_id"] for n in everyone if n["node_id"] in gone],
        "events": backlog.events,
    }
    if history is not None:
        doc["history"] = {**history.to_json(), "forecast": _forecast(entries, summary)}
    return doc


def _forecast(entries: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """What the used-space chart projects: the cluster's growth (the nodes' growth summed, as used bytes are)
    and the soonest node's days until full; both null until the capacity monitor has enough history."""
    growth = [float(n["growth_bytes_per_day"]) for n in entries if n.get("growth_bytes_per_day") is not None]
    return {
        "growth_bytes_per_day": round(sum(growth), 1) if growth else None,
        "days_until_full": summary["days_until_full"],
    }
