"""Operator endpoints of the control plane (admin scope): node and capacity views, node states,
replacing a node, backfill progress and cluster-wide repair."""

from __future__ import annotations

import re
from typing import Any

import psycopg.errors
from aiohttp import web

from common.db import control as db_control
from common.db.control import ControlNodeRow, EventRow
from common.errors import Conflict, InvalidRequest, NotFound
from common.httpkit import json_response
from query_service import keys
from query_service.capacity import decide
from query_service.monitor import load_report
from query_service.requests import read_json_object

NODE_STATES = ("active", "readonly", "draining", "dead")
MAX_BODY_BYTES = 16 * 1024
_NODE_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # as the routes' {node_id}: ASCII only, no leading '-'


async def _nodes_having(request: web.Request, node_id: str) -> dict[str, ControlNodeRow]:
    """Every node (with its set) by id; 404 when ``node_id`` is not one of them."""
    rows = {r["node_id"]: r for r in await db_control.nodes_with_sets(request.app[keys.POOL])}
    if node_id not in rows:
        raise NotFound("no such node")
    return rows


async def cluster_view(request: web.Request) -> dict[str, Any]:
    """Everything an operator (or the dashboard) shows: nodes, sets, regions with capacity, growth and
    days until full, replication backlog, recent control-plane events, and the monitor's state."""
    app = request.app
    settings, pool, registry = app[keys.SETTINGS], app[keys.POOL], app[keys.REGISTRY]
    report = await load_report(pool, settings, registry)
    backlog = await db_control.backlog(pool)
    view = report.to_json()
    for node in view["nodes"]:
        waiting = backlog.get(node["node_id"], {})
        node["backlog"] = {s: waiting.get(s, 0) for s in ("pending", "missing", "corrupt")}
        node["health"] = (
            ("replaced" if node["replaced"] else "dead")
            if node["state"] == "dead"
            else ("healthy" if node["healthy"] else "unhealthy")
        )
        info = registry.nodes.get(node["node_id"])
        node["base_url"] = info.base_url if info else None
    decisions = decide(report, settings.capacity, settings.health)
    monitor = app.get(keys.MONITOR)
    view["thresholds"] = {
        "high_water": settings.capacity.high_water,
        "critical": settings.capacity.critical,
        "provision_headroom": settings.capacity.provision_headroom,
        "provision_horizon_days": settings.capacity.provision_horizon_days,
    }
    view["provisioning"] = {
        "provisioner": settings.provisioner.kind,
        "wanted": decisions.provision_reason,
        "in_flight": [_event(e) for e in await db_control.in_flight(pool)],
    }
    view["monitor"] = {"enabled": settings.capacity.enabled, "leader_here": bool(monitor and monitor.is_leader)}
    view["events"] = [_event(e) for e in await db_control.recent_events(pool, 30)]
    return view


def _event(row: EventRow) -> dict[str, Any]:
    """An event's public fields (an in-flight row also has its age and update time)."""
    keep = (
        "event_id",
        "kind",
        "set_id",
        "node_id",
        "state",
        "reason",
        "outcome",
        "plan",
        "provisioner",
        "created_at",
        "finished_at",
    )
    return {k: row.get(k) for k in keep}


async def list_nodes(request: web.Request) -> web.Response:
    await request.app[keys.AUTH].required(request, scope="admin")
    return json_response(await cluster_view(request))


async def set_state(request: web.Request) -> web.Response:
    app = request.app
    await app[keys.AUTH].required(request, scope="admin")
    node_id = request.match_info["node_id"]
    body = await read_json_object(request, MAX_BODY_BYTES)
    state = body.get("state")
    if state not in NODE_STATES:
        raise InvalidRequest(f"state must be one of {', '.join(NODE_STATES)}")
    rows = await _nodes_having(request, node_id)
    try:
        await db_control.set_node_state(app[keys.POOL], node_id, state, "operator")
    except psycopg.errors.UniqueViolation:
        raise Conflict(
            f"another live node serves {rows[node_id]['set_id']} in {rows[node_id]['region']}", code="slot_taken"
        ) from None
    if rows[node_id]["state"] == "dead" and state != "dead":
        await app[keys.MONITOR].rejoin(node_id)  # it missed the uploads while dead: backfill them
    await db_control.record_event(
        app[keys.POOL], "node_state", f"set by an operator: {state}", node_id=node_id, outcome=f"state {state}"
    )
    await app[keys.REGISTRY].reload(app[keys.POOL])
    return json_response({"node_id": node_id, "state": state, "state_set_by": "operator"})


async def replace_node(request: web.Request) -> web.Response:
    app = request.app
    await app[keys.AUTH].required(request, scope="admin")
    old = request.match_info["node_id"]
    body = await read_json_object(request, MAX_BODY_BYTES)
    new = body.get("with")
    if new is not None and (not isinstance(new, str) or not _NODE_ID_RE.fullmatch(new)):
        raise InvalidRequest("with must be a node id (lowercase letters, digits and '-')")
    rows = await _nodes_having(request, old)
    if new == old:
        raise InvalidRequest("a node cannot replace itself")
    if (
        new is not None
        and new in rows
        and (rows[new]["set_id"], rows[new]["region"]) != (rows[old]["set_id"], rows[old]["region"])
    ):
        raise Conflict(f"{new} already serves {rows[new]['set_id']} in {rows[new]['region']}", code="node_exists")
    o = rows[old]
    taken = [
        r["node_id"]
        for r in rows.values()
        if r["node_id"] not in (old, new)
        and r["state"] != "dead"
        and (r["set_id"], r["region"]) == (o["set_id"], o["region"])
    ]
    if taken:
        raise Conflict(f"{old} was already replaced by {taken[0]}", code="already_replaced")
    try:
        plan = await app[keys.MONITOR].plan_replacement(
            old, new, str(body.get("reason") or "operator request"), call_provisioner=bool(body.get("provision", True))
        )
    except psycopg.errors.UniqueViolation:
        raise Conflict(f"a replacement of {old} is already in flight", code="already_replaced") from None
    await app[keys.REGISTRY].reload(app[keys.POOL])
    node = plan["nodes"][0]
    return json_response(
        {
            "plan": plan,
            "config": {
                "node_id": node["node_id"],
                "region": node["region"],
                "set_id": node["set_id"],
                "lat": node["lat"],
                "lon": node["lon"],
            },
        },
        status=202,
    )


async def backfill(request: web.Request) -> web.Response:
    app = request.app
    await app[keys.AUTH].required(request, scope="admin")
    node_id = request.match_info["node_id"]
    progress = await db_control.backfill_progress(app[keys.POOL], node_id)
    if progress is None:
        raise NotFound("no such node")
    return json_response(progress)


async def repair(request: web.Request) -> web.Response:
    """GET: what is under-replicated. POST: make every waiting copy due at once (the members' sweeps copy)."""
    app = request.app
    await app[keys.AUTH].required(request, scope="admin")
    pool = app[keys.POOL]
    nudged = await db_control.nudge_repairs(pool) if request.method == "POST" else 0
    rows = await db_control.under_replicated(pool)
    by_node: dict[str, dict[str, int]] = {}
    for r in rows:
        counts = by_node.setdefault(r["node_id"], {"pending": 0, "missing": 0, "corrupt": 0})
        counts[r["state"]] += 1
    dead = sorted({r["node_id"] for r in rows if r["node_state"] == "dead"})
    return json_response(
        {
            "under_replicated": len({r["image_id"] for r in rows}),
            "replicas_waiting": len(rows),
            "by_node": by_node,
            "nudged": nudged,
            "on_dead_nodes": dead,
            "hint": ("replace dead nodes: minicdn node replace OLD --with NEW" if dead else None),
        }
    )
