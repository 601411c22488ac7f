"""Control-plane commands of the `minicdn` CLI: `status`, `node replace|state|backfill`, `repair`."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from minicdn.client import find_cluster, get_json, send_json

console = Console()
HEALTH_STYLE = {"healthy": "[green]healthy[/green]", "unhealthy": "[red]down[/red]"}


def add_parsers(sub: Any, add_client_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    status = sub.add_parser("status", help="regions, sets, nodes: state, health, capacity, days until full, backlog")
    add_client_flags(status)

    node = sub.add_parser("node", help="operate on a node: replace it, set its state, watch its backfill")
    actions = node.add_subparsers(dest="node_command", required=True)
    replace = actions.add_parser("replace", help="replace a lost node by a new one in the same region and set")
    replace.add_argument("old_node")
    replace.add_argument("--with", dest="new_node", help="id of the new node (default: a generated one)")
    replace.add_argument(
        "--no-provision",
        action="store_true",
        help="do not call the provisioner: you start the new node yourself with the printed config",
    )
    replace.add_argument("--wait", type=float, default=0, help="watch the backfill for up to this many seconds")
    add_client_flags(replace)
    state = actions.add_parser("state", help="set a node's state (an operator's state is never undone automatically)")
    state.add_argument("node_id")
    state.add_argument("state", choices=("active", "readonly", "draining", "dead"))
    add_client_flags(state)
    backfill = actions.add_parser("backfill", help="show (and with --wait, follow) a node's backfill")
    backfill.add_argument("node_id")
    backfill.add_argument("--wait", type=float, default=0)
    add_client_flags(backfill)

    repair = sub.add_parser("repair", help="find every under-replicated image and have it copied again")
    repair.add_argument("--wait", type=float, default=0, help="wait up to this many seconds for all to be ok")
    add_client_flags(repair)


def human(n: float | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return str(n)


def bar(ratio: float, width: int = 12) -> str:
    filled = min(width, max(0, round(ratio * width)))
    colour = "red" if ratio >= 0.95 else "yellow" if ratio >= 0.8 else "green"
    return f"[{colour}]{'█' * filled}[/{colour}]{'░' * (width - filled)} {ratio:4.0%}"


def _tier_table(nodes: list[dict[str, Any]]) -> Table:
    """One row per node and storage tier (hot first; cold only where a node has one); variants live hot."""
    table = Table(title="storage tiers")
    for col in ("node", "tier", "used", "free", "originals", "variants"):
        table.add_column(col)
    for n in nodes:
        tiers = n.get("tiers") or {}
        for name, t in sorted(tiers.items(), key=lambda kv: kv[0] != "hot"):
            ratio = t["used_bytes"] / t["capacity_bytes"] if t["capacity_bytes"] else 0.0
            table.add_row(
                n["node_id"],
                name,
                f"{bar(ratio)} of {human(t['capacity_bytes'])}",
                human(t["free_bytes"]),
                str(t["originals"]),
                human(n.get("variant_bytes") or 0) if name == "hot" else "-",
            )
    return table


def _days(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} days"


async def cmd_status(args: argparse.Namespace) -> int:
    cluster = find_cluster(args.query_url, args.api_key, args.state_dir)
    async with aiohttp.ClientSession() as session:
        data = await get_json(session, cluster, "/v1/nodes")
    nodes = Table(title="nodes")
    for col in (
        "region",
        "set",
        "node",
        "state",
        "health",
        "used",
        "free",
        "objects",
        "growth/day",
        "until full",
        "backlog",
        "heartbeat",
    ):
        nodes.add_column(col)
    for n in data["nodes"]:
        age = n["heartbeat_age_s"]
        health = HEALTH_STYLE.get(n["health"], "[dim]dead[/dim]")
        waiting = sum(n["backlog"].values())
        nodes.add_row(
            n["region"],
            f"{n['set_id']} ({n['set_state']})",
            n["node_id"],
            n["state"] + (" (op)" if n["state_set_by"] == "operator" else ""),
            health,
            f"{bar(n['used_ratio'])} of {human(n['capacity_bytes'])}",
            human(n["free_bytes"]),
            str(n["objects"]),
            human(n["growth_bytes_per_day"]),
            _days(n["days_until_full"]),
            str(waiting) if waiting else "0",
            "never" if age is None else f"{age:.1f}s ago",
        )
    console.print(nodes)
    console.print(_tier_table(data["nodes"]))
    sets = Table(title="replication sets")
    for col in ("set", "state", "members", "used", "room before close", "until closed"):
        sets.add_column(col)
    for s in data["sets"]:
        sets.add_row(
            s["name"],
            s["state"],
            ", ".join(s["nodes"]),
            bar(s["used_ratio"]),
            human(s["headroom_bytes"]),
            _days(s["days_until_closed"]),
        )
    console.print(sets)
    regions = Table(title="regions")
    for col in ("region", "nodes", "used", "free", "objects", "growth/day", "until full"):
        regions.add_column(col)
    for r in data["regions"]:
        regions.add_row(
            r["name"],
            str(len(r["nodes"])),
            f"{bar(r['used_ratio'])} of {human(r['capacity_bytes'])}",
            human(r["free_bytes"]),
            str(r["objects"]),
            human(r["growth_bytes_per_day"]),
            _days(r["days_until_full"]),
        )
    console.print(regions)
    prov = data["provisioning"]
    console.print(
        f"provisioner: {prov['provisioner']}; new set wanted: {prov['wanted'] or 'no'}; "
        f"in flight: {len(prov['in_flight'])}"
    )
    for e in data["events"][:8]:
        console.print(
            f"  {e['created_at']}  {e['kind']:<10} {e['state']:<9} "
            f"{e['set_id'] or e['node_id'] or ''}: {e['reason']} -> {e['outcome'] or ''}",
            highlight=False,
        )
    return 0


async def _follow_backfill(session: aiohttp.ClientSession, cluster: Any, node_id: str, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(f"backfill {node_id}", total=None)
        while True:
            try:
                p = await get_json(session, cluster, f"/v1/nodes/{node_id}/backfill")
            except Exception:
                p = {"complete": False, "done": 0, "expected": None}
            progress.update(task, completed=p["done"], total=p["expected"])
            if p["complete"] and p.get("state") != "dead":
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.5)


async def cmd_node(args: argparse.Namespace) -> int:
    cluster = find_cluster(args.query_url, args.api_key, args.state_dir)
    async with aiohttp.ClientSession() as session:
        if args.node_command == "state":
            result = await send_json(session, cluster, "POST", f"/v1/nodes/{args.node_id}/state", {"state": args.state})
            console.print(f"{result['node_id']}: {result['state']}")
            return 0
        if args.node_command == "backfill":
            if args.wait:
                return 0 if await _follow_backfill(session, cluster, args.node_id, args.wait) else 1
            console.print(await get_json(session, cluster, f"/v1/nodes/{args.node_id}/backfill"))
            return 0
        result = await send_json(
            session,
            cluster,
            "POST",
            f"/v1/nodes/{args.old_node}/replace",
            {"with": args.new_node, "provision": not args.no_provision},
        )
        cfg = result["config"]
        console.print(
            f"{args.old_node} is now dead; its replacement is [bold]{cfg['node_id']}[/bold] in "
            f"{cfg['region']}, {cfg['set_id']} (plan {result['plan']['plan_id']})."
        )
        if args.no_provision:
            console.print("start it with this [node] section (plus your cluster's database/nats/signing):")
            console.print(
                f'node_id = "{cfg["node_id"]}"\nregion = "{cfg["region"]}"\nset_id = "{cfg["set_id"]}"\n'
                f"lat = {cfg['lat']}\nlon = {cfg['lon']}",
                highlight=False,
            )
        if args.wait:
            return 0 if await _follow_backfill(session, cluster, cfg["node_id"], args.wait) else 1
    return 0


async def cmd_repair(args: argparse.Namespace) -> int:
    cluster = find_cluster(args.query_url, args.api_key, args.state_dir)
    async with aiohttp.ClientSession() as session:
        found = await send_json(session, cluster, "POST", "/v1/repair")
        console.print(
            f"{found['under_replicated']} image(s) under-replicated "
            f"({found['replicas_waiting']} replica(s) waiting for a copy)"
        )
        for node_id, counts in sorted(found["by_node"].items()):
            console.print(f"  {node_id}: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
        if found["on_dead_nodes"]:
            console.print(f"[yellow]on dead nodes: {', '.join(found['on_dead_nodes'])}: {found['hint']}[/yellow]")
        deadline = time.monotonic() + args.wait
        while found["replicas_waiting"]:
            if time.monotonic() > deadline:
                console.print(f"{found['replicas_waiting']} replica(s) still waiting")
                return 1 if args.wait else 0
            await asyncio.sleep(0.5)
            found = await get_json(session, cluster, "/v1/repair")
    console.print("all replicas ok")
    return 0
