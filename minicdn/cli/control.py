"""Control-plane commands of the `minicdn` CLI: `status`, `node replace|state|backfill`, `repair`."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from minicdn.cli import render
from minicdn.cli.render import Column, bar, human
from minicdn.client import find_cluster, get_json, send_json

HEALTH_STYLE = {"healthy": "[green]healthy[/green]", "unhealthy": "[red]down[/red]", "replaced": "[dim]replaced[/dim]"}


def add_parsers(sub: Any, add_client_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    status = sub.add_parser(
        "status",
        help="regions, sets, nodes: state, health, capacity, days until full, backlog",
        formatter_class=render.HelpFormatter,
    )
    render.add_json_flag(status, "the GET /v1/nodes body")
    add_client_flags(status)

    node = sub.add_parser("node", help="operate on a node: replace it, set its state, watch its backfill")
    actions = node.add_subparsers(dest="node_command", required=True)
    replace = actions.add_parser(
        "replace",
        help="replace a lost node by a new one in the same region and set",
        formatter_class=render.HelpFormatter,
    )
    replace.add_argument("old_node", help="id of the node to replace")
    replace.add_argument("--with", dest="new_node", help="id of the new node (default: a generated one)")
    replace.add_argument(
        "--no-provision",
        action="store_true",
        help="do not call the provisioner: you start the new node yourself with the printed config",
    )
    replace.add_argument("--wait", type=float, default=0, help="watch the backfill for up to this many seconds")
    render.add_json_flag(replace, "the POST /v1/nodes/{id}/replace body, plus `backfill` with --wait")
    add_client_flags(replace)
    state = actions.add_parser(
        "state",
        help="set a node's state (an operator's state is never undone automatically)",
        formatter_class=render.HelpFormatter,
    )
    state.add_argument("node_id", help="the node")
    state.add_argument("state", choices=("active", "readonly", "draining", "dead"), help="its new state")
    render.add_json_flag(state, "the POST /v1/nodes/{id}/state body")
    add_client_flags(state)
    backfill = actions.add_parser(
        "backfill",
        help="show (and with --wait, follow) a node's backfill",
        formatter_class=render.HelpFormatter,
    )
    backfill.add_argument("node_id", help="the new node")
    backfill.add_argument("--wait", type=float, default=0, help="follow it for up to this many seconds")
    render.add_json_flag(backfill, "the GET /v1/nodes/{id}/backfill body")
    add_client_flags(backfill)

    repair = sub.add_parser(
        "repair",
        help="find every under-replicated image and have it copied again",
        formatter_class=render.HelpFormatter,
    )
    repair.add_argument("--wait", type=float, default=0, help="wait up to this many seconds for all to be ok")
    render.add_json_flag(repair, "the POST /v1/repair body (with --wait: the last GET /v1/repair)")
    add_client_flags(repair)


def _days(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} days"


def _used(ratio: float, capacity: int | None) -> str:
    return f"{ratio:.0%} of {human(capacity)}"


Records = tuple[str, list[Column], list[list[str]]]


def status_records(data: dict[str, Any]) -> list[Records]:
    """The tables of `minicdn status` from a `GET /v1/nodes` body: (title, columns, rows). Kept columns name the
    record (node, region, set, state, health, used); the rest are left out, from the last back, when narrow."""
    node_cols = [
        Column("node", keep=True),
        Column("region", keep=True),
        Column("set", keep=True),
        Column("state", keep=True),
        Column("health", keep=True),
        Column("used", keep=True, justify="right"),
        Column("free", justify="right"),
        Column("until full", justify="right"),
        Column("backlog", justify="right"),
        Column("objects", justify="right"),
        Column("heartbeat", justify="right"),
        Column("growth/day", justify="right"),
        Column("set state"),
        Column("bar"),
    ]
    node_rows = []
    for n in data["nodes"]:
        age = n["heartbeat_age_s"]
        node_rows.append(
            [
                n["node_id"],
                n["region"],
                n["set_id"],
                n["state"] + (" (op)" if n["state_set_by"] == "operator" else ""),
                HEALTH_STYLE.get(n["health"], "[dim]dead[/dim]"),
                _used(n["used_ratio"], n["capacity_bytes"]),
                human(n["free_bytes"]),
                _days(n["days_until_full"]),
                str(sum(n["backlog"].values())),
                str(n["objects"]),
                "never" if age is None else f"{age:.1f}s ago",
                human(n["growth_bytes_per_day"]),
                n["set_state"],
                bar(n["used_ratio"]),
            ]
        )
    tier_cols = [
        Column("node", keep=True),
        Column("tier", keep=True),
        Column("used", keep=True, justify="right"),
        Column("free", justify="right"),
        Column("originals", justify="right"),
        Column("variants", justify="right"),
        Column("bar"),
    ]
    tier_rows = []
    for n in data["nodes"]:  # hot first; cold only where a node has one; variants live hot
        for name, t in sorted((n.get("tiers") or {}).items(), key=lambda kv: kv[0] != "hot"):
            ratio = t["used_bytes"] / t["capacity_bytes"] if t["capacity_bytes"] else 0.0
            tier_rows.append(
                [
                    n["node_id"],
                    name,
                    _used(ratio, t["capacity_bytes"]),
                    human(t["free_bytes"]),
                    str(t["originals"]),
                    human(n.get("variant_bytes") or 0) if name == "hot" else "-",
                    bar(ratio),
                ]
            )
    set_cols = [
        Column("set", keep=True),
        Column("state", keep=True),
        Column("used", keep=True, justify="right"),
        Column("members", keep=True, wrap=True),
        Column("room before close", justify="right"),
        Column("until closed", justify="right"),
    ]
    set_rows = [
        [
            s["name"],
            s["state"],
            f"{s['used_ratio']:.0%}",
            ", ".join(s["nodes"]),
            human(s["headroom_bytes"]),
            _days(s["days_until_closed"]),
        ]
        for s in data["sets"]
    ]
    region_cols = [
        Column("region", keep=True),
        Column("nodes", keep=True, justify="right"),
        Column("used", keep=True, justify="right"),
        Column("free", justify="right"),
        Column("until full", justify="right"),
        Column("objects", justify="right"),
        Column("growth/day", justify="right"),
        Column("bar"),
    ]
    region_rows = [
        [
            r["name"],
            str(len(r["nodes"])),
            _used(r["used_ratio"], r["capacity_bytes"]),
            human(r["free_bytes"]),
            _days(r["days_until_full"]),
            str(r["objects"]),
            human(r["growth_bytes_per_day"]),
            bar(r["used_ratio"]),
        ]
        for r in data["regions"]
    ]
    event_cols = [
        Column("time", keep=True),
        Column("kind", keep=True),
        Column("state", keep=True),
        Column("target", keep=True),
        Column("reason", wrap=True),
        Column("outcome", wrap=True),
    ]
    event_rows = [
        [
            str(e["created_at"])[:19].replace("T", " "),
            e["kind"],
            e["state"],
            e["set_id"] or e["node_id"] or "-",
            escape(e["reason"] or ""),
            escape(e["outcome"] or ""),
        ]
        for e in data["events"][:8]
    ]
    return [
        ("nodes", node_cols, node_rows),
        ("storage tiers", tier_cols, tier_rows),
        ("replication sets", set_cols, set_rows),
        ("regions", region_cols, region_rows),
        ("recent events", event_cols, event_rows),
    ]


async def cmd_status(args: argparse.Namespace) -> int:
    cluster = find_cluster(args.query_url, args.api_key, args.state_dir)
    async with aiohttp.ClientSession() as session:
        data = await get_json(session, cluster, "/v1/nodes")
    if args.json:
        render.emit_json(data)
        return 0
    console = render.out()
    for i, (title, columns, rows) in enumerate(status_records(data)):
        if i:
            console.print()
        render.print_records(console, columns, rows, title)
    prov = data["provisioning"]
    console.print()
    console.print(
        f"provisioner: {prov['provisioner']}; new set wanted: {prov['wanted'] or 'no'}; "
        f"in flight: {len(prov['in_flight'])}",
        markup=False,
    )
    return 0


async def _follow_backfill(
    session: aiohttp.ClientSession, cluster: Any, node_id: str, wait_s: float
) -> dict[str, Any] | None:
    """Follow a backfill (a bar on stderr) until complete or ``wait_s``; the last progress, None if unreadable."""
    deadline = time.monotonic() + wait_s
    last: dict[str, Any] | None = None
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=render.err(),
    ) as progress:
        task = progress.add_task(f"backfill {node_id}", total=None)
        while True:
            try:
                last = p = await get_json(session, cluster, f"/v1/nodes/{node_id}/backfill")
            except Exception:
                p = {"complete": False, "done": 0, "expected": None}
            progress.update(task, completed=p["done"], total=p["expected"])
            if (p["complete"] and p.get("state") != "dead") or time.monotonic() > deadline:
                return last
            await asyncio.sleep(0.5)


def _backfill_done(p: dict[str, Any] | None) -> bool:
    return bool(p and p["complete"] and p.get("state") != "dead")


def _print_fields(data: dict[str, Any]) -> None:
    """A flat body as `key: value` lines (one per field: greppable, never wider than its value)."""
    console = render.out()
    for key, value in data.items():
        shown = json.dumps(value) if isinstance(value, dict | list) else str(value)
        console.print(f"{key}: {shown}", markup=False, soft_wrap=True)


async def cmd_node(args: argparse.Namespace) -> int:
    cluster = find_cluster(args.query_url, args.api_key, args.state_dir)
    console = render.out()
    async with aiohttp.ClientSession() as session:
        if args.node_command == "state":
            result = await send_json(session, cluster, "POST", f"/v1/nodes/{args.node_id}/state", {"state": args.state})
            if args.json:
                render.emit_json(result)
            else:
                console.print(f"{result['node_id']}: {result['state']}", markup=False)
            return 0
        if args.node_command == "backfill":
            if args.wait:
                progress = await _follow_backfill(session, cluster, args.node_id, args.wait)
            else:
                progress = await get_json(session, cluster, f"/v1/nodes/{args.node_id}/backfill")
            if args.json:
                render.emit_json(progress)
            elif progress is not None:
                _print_fields(progress)
            return 0 if not args.wait or _backfill_done(progress) else 1
        result = await send_json(
            session,
            cluster,
            "POST",
            f"/v1/nodes/{args.old_node}/replace",
            {"with": args.new_node, "provision": not args.no_provision},
        )
        cfg = result["config"]
        if not args.json:
            console.print(
                f"{args.old_node} is now dead; its replacement is [bold]{cfg['node_id']}[/bold] in "
                f"{cfg['region']}, {cfg['set_id']} (plan {result['plan']['plan_id']})."
            )
        if args.no_provision and not args.json:
            console.print(
                "start it with this [node] section (plus your cluster's database/nats/signing):", markup=False
            )
            console.print(
                f'node_id = "{cfg["node_id"]}"\nregion = "{cfg["region"]}"\nset_id = "{cfg["set_id"]}"\n'
                f"lat = {cfg['lat']}\nlon = {cfg['lon']}",
                markup=False,
            )
        code = 0
        if args.wait:
            result["backfill"] = await _follow_backfill(session, cluster, cfg["node_id"], args.wait)
            code = 0 if _backfill_done(result["backfill"]) else 1
        if args.json:
            render.emit_json(result)
    return code


async def cmd_repair(args: argparse.Namespace) -> int:
    cluster = find_cluster(args.query_url, args.api_key, args.state_dir)
    # With --json the running commentary goes to stderr and only the final body to stdout.
    console = render.err() if args.json else render.out()
    async with aiohttp.ClientSession() as session:
        found = await send_json(session, cluster, "POST", "/v1/repair")
        console.print(
            f"{found['under_replicated']} image(s) under-replicated "
            f"({found['replicas_waiting']} replica(s) waiting for a copy)"
        )
        for node_id, counts in sorted(found["by_node"].items()):
            console.print(f"  {node_id}: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v), markup=False)
        if found["on_dead_nodes"]:
            console.print(
                f"on dead nodes: {', '.join(found['on_dead_nodes'])}: {found['hint']}", style="yellow", markup=False
            )
        deadline = time.monotonic() + args.wait
        code = 0
        while found["replicas_waiting"]:
            if time.monotonic() > deadline:
                console.print(f"{found['replicas_waiting']} replica(s) still waiting")
                code = 1 if args.wait else 0
                break
            await asyncio.sleep(0.5)
            found = await get_json(session, cluster, "/v1/repair")
        else:
            console.print("all replicas ok")
    if args.json:
        render.emit_json(found)
    return code
