"""`minicdn` console script: run the dev cluster or one component, and client commands against a cluster."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table

from common.config import ConfigError, load_settings
from common.logs import setup_logging
from minicdn.cli import control as cli_control
from minicdn.cli import images as cli_images
from minicdn.cli import keys as cli_keys
from minicdn.cli import nginx_config as cli_nginx
from minicdn.cli import render
from minicdn.client import ClientError, ClusterRef, find_cluster, get_json

console = Console()
err_console = Console(stderr=True)


def _add_client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--query-url", help="query service URL (default: MINICDN_QUERY_URL, else cluster.json)")
    p.add_argument("--api-key", help="API key (default: MINICDN_API_KEY, else cluster.json)")
    p.add_argument("--state-dir", default=".minicdn", help="where `minicdn dev` keeps cluster.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minicdn", description="Self-hosted mini-CDN for user-generated images.")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run a whole multi-region cluster on embedded Postgres and NATS")
    dev.add_argument(
        "--regions",
        default="us-east,eu-west,ap-southeast",
        help="comma-separated: any of us-east, us-west, eu-west, ap-southeast",
    )
    dev.add_argument("--nodes-per-region", type=int, default=1, help="N nodes per region = N replication sets")
    dev.add_argument("--node-capacity", default="0", help="usable space per node, e.g. 20MB (0: the disk)")
    dev.add_argument("--state-dir", default=".minicdn", help="database, stream, objects and cluster.json")
    dev.add_argument("--host", default="127.0.0.1", help="address every process listens on (default: 127.0.0.1)")
    dev.add_argument("--port", type=int, default=8080, help="query service port; nodes use the next ones (0: free)")
    dev.add_argument("--geoip-db", default="", help="GeoIP2 City database (default: the packaged GeoLite2)")
    dev.add_argument(
        "--start-timeout",
        type=float,
        default=60.0,
        help="seconds for every process to become healthy before start-up fails (default: 60)",
    )
    dev.add_argument(
        "--no-restart",
        action="store_true",
        help="report a process that dies but do not restart it (to watch a failover)",
    )

    for name, text in (
        ("storage-node", "run a storage node (with its replicator unless disabled)"),
        ("query-service", "run a query service instance"),
        ("replicator", "run a node's replicator as its own process"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", help="TOML file; MINICDN_<SECTION>_<KEY> env vars override it")
        if name in ("query-service", "storage-node"):  # set by the parent of its workers (minicdn.workers), not by hand
            p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
            p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
        if name == "storage-node":  # the data directories' lock, inherited from that parent
            p.add_argument("--lock-fds", default="", help=argparse.SUPPRESS)

    boot = sub.add_parser("bootstrap-key", help="create an admin API key directly in Postgres (new deployments)")
    boot.add_argument("--config", help="TOML file with [database] (MINICDN_DATABASE_URL also works)")
    boot.add_argument("--name", default="bootstrap-admin", help="the key's name (default: bootstrap-admin)")

    cli_images.add_parsers(sub, _add_client_flags)

    url = sub.add_parser("url", help="print the nearest URL of an image", formatter_class=render.HelpFormatter)
    url.add_argument("image_id", help="the image's id")
    url.add_argument("--w", type=float, help="width of the box, CSS px, 1-16384 (default: no box)")
    url.add_argument("--h", type=float, help="height of the box, CSS px, 1-16384 (default: no box)")
    url.add_argument("--dpr", type=float, help="device pixel ratio, 0.5-5 (default: 1)")
    url.add_argument("--fmt", default="auto", help="auto, jpeg, webp, avif or png")
    url.add_argument("--client-ip", help="the end user's address, to pick the node nearest it (default: the caller's)")
    render.add_json_flag(url, "the GET /v1/images/{id}/url body")
    _add_client_flags(url)

    cli_control.add_parsers(sub, _add_client_flags)

    bench = sub.add_parser(
        "bench",
        help="load a running cluster through the public API and print figures",
        formatter_class=render.HelpFormatter,
    )
    bench.add_argument("--uploads", type=int, help="uploads to time (default: 300; --peers: 1000 a run, --quick 20)")
    bench.add_argument("--idle-uploads", type=int, default=20, help="uploads one at a time, for the idle lag")
    bench.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    bench.add_argument("--lookups", type=int, default=3000, help="URL lookups to time")
    bench.add_argument("--gets", type=int, default=3000, help="node GETs of stored variants to time")
    bench.add_argument("--keep", action="store_true", help="keep the uploaded images (default: delete them)")
    render.add_json_flag(bench, "{figures: {...}, removed}; progress and the table go to stderr")
    bench.add_argument(
        "--pipeline",
        action="store_true",
        help="image-pipeline figures instead: fresh builds vs a pyvips loop and thumbor, AVIF, RSS",
    )
    bench.add_argument("--images", type=int, default=16, help="--pipeline: 12 MP JPEGs to build variants of")
    bench.add_argument("--stored-gets", type=int, default=3000, help="--pipeline: GETs of one stored variant")
    bench.add_argument("--skip-100mp", action="store_true", help="--pipeline: skip the 100-megapixel RSS figure")
    bench.add_argument(
        "--peers",
        action="store_true",
        help="side by side with SeaweedFS and nginx started here: variant GETs, URL lookups, uploads",
    )
    bench.add_argument("--runs", type=int, help="--peers: runs of each load, the median shown (default: 3; --quick 1)")
    bench.add_argument("--duration", type=float, help="--peers: seconds of each GET load (default: 10; --quick 1)")
    bench.add_argument("--connections", type=int, default=64, help="--peers: connections of each GET load")
    bench.add_argument("--threads", type=int, default=2, help="--peers: wrk threads, or load generator processes")
    bench.add_argument(
        "--loader",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="--peers: wrk, our Python load generator, or auto: wrk when installed",
    )
    bench.add_argument("--photo", help="--peers: picture whose ~100 KB variant is served (default: one made here)")
    bench.add_argument("--quick", action="store_true", help="--peers: 1 s loads, 20 uploads, 1 run: a smoke test")
    bench.add_argument(
        "--rows",
        default="gets,front,lookups,uploads",
        help="--peers: the rows to measure, comma-separated (default: all: gets,front,lookups,uploads)",
    )
    _add_client_flags(bench)

    cli_keys.add_parser(sub, _add_client_flags)
    cli_nginx.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "dev":
            return cmd_dev(args)
        if args.command in ("storage-node", "query-service", "replicator"):
            return cmd_component(args)
        if args.command == "bootstrap-key":
            from minicdn.bootstrap import bootstrap_admin_key

            console.print(
                asyncio.run(bootstrap_admin_key(load_settings(args.config), args.name)), highlight=False, soft_wrap=True
            )
            return 0
        if args.command == "keys":
            return asyncio.run(cli_keys.cmd_keys(args))
        if args.command == "nginx-config":
            return cli_nginx.cmd_nginx_config(args)
        handler = {
            "upload": cli_images.cmd_upload,
            "delete": cli_images.cmd_delete,
            "images": cli_images.cmd_images,
            "url": cmd_url,
            "status": cli_control.cmd_status,
            "bench": cmd_bench,
            "node": cli_control.cmd_node,
            "repair": cli_control.cmd_repair,
        }[args.command]
        return asyncio.run(handler(args))
    except ConfigError as exc:
        err_console.print(f"[red]configuration error:[/red] {exc}")
        return 2
    except ClientError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        return 1


class _Shutdown(BaseException):
    """Raised from the signal handler so start-up or the watch loop unwinds into the cleanup."""


def cmd_dev(args: argparse.Namespace) -> int:
    from common.geo import REGIONS
    from minicdn.devcluster import DevCluster, DevOptions, PortsUnavailable, parse_size
    from minicdn.embedded import ProcessFailed

    regions = tuple(r.strip() for r in args.regions.split(",") if r.strip())
    unknown = [r for r in regions if r not in REGIONS]
    if unknown or not regions or len(set(regions)) != len(regions):
        err_console.print(f"[red]--regions: pick distinct names among {', '.join(REGIONS)}[/red]")
        return 2
    try:
        node_capacity_bytes = parse_size(args.node_capacity)
    except ValueError as exc:
        err_console.print(f"[red]--node-capacity: {exc}[/red]")
        return 2
    options = DevOptions(
        state_dir=Path(args.state_dir),
        regions=regions,
        nodes_per_region=args.nodes_per_region,
        node_capacity_bytes=node_capacity_bytes,
        host=args.host,
        port=args.port,
        geoip_db=args.geoip_db,
        start_timeout_s=args.start_timeout,
        restart=not args.no_restart,
    )
    cluster = DevCluster(options)

    def on_signal(signum: int, _frame: Any) -> None:
        raise _Shutdown(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        with err_console.status("starting Postgres, NATS, storage nodes and the query service..."):
            info = cluster.start()
        _print_cluster(info)
        cluster.watch(threading.Event())
    except PortsUnavailable as exc:  # nothing was started or written
        for use in exc.uses:
            err_console.print(
                f"[red]port {use.port} ({use.purpose}) is {use.problem}[/red] on {exc.host}", soft_wrap=True
            )
        err_console.print(
            "nothing was started; free the port, or run `minicdn dev --port 0` to use free ports", soft_wrap=True
        )
        return 2
    except ProcessFailed as exc:  # start() has stopped everything it started
        err_console.print(
            f"[red]start-up failed: {exc.name} {exc.what}[/red]; stopped everything it started", soft_wrap=True
        )
        err_console.print(f"last lines of {exc.log or 'its output'}:", highlight=False, soft_wrap=True)
        err_console.print(exc.tail, markup=False, highlight=False, soft_wrap=True)
        return 1
    except _Shutdown:
        if not cluster.running:  # interrupted during start-up: start() has stopped what it started
            err_console.print("start-up interrupted; stopped everything it started")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if cluster.running:
            err_console.print("stopping...")
            cluster.stop()
            err_console.print("stopped.")
    return 0


def _print_cluster(info: dict[str, Any]) -> None:
    table = Table(title="minicdn dev cluster")
    table.add_column("node")
    table.add_column("region")
    table.add_column("set")
    table.add_column("url")
    for node in info["nodes"]:
        table.add_row(node["node_id"], node["region"], node["set_id"], node["url"])
    console.print(table)
    console.print(f"query service: [bold]{info['query_url']}[/bold]")
    # The key rides in the fragment: the browser keeps it and never sends it to a server or a log.
    console.print(f"dashboard:     {info['dashboard_url']}#key={info['api_key']}", highlight=False, soft_wrap=True)
    if info.get("upload_demo_url"):
        console.print(
            f"upload demo:   {info['upload_demo_url']}#key={info['api_key']}", highlight=False, soft_wrap=True
        )
    console.print(f"API key:       [bold]{info['api_key']}[/bold] (admin scope)")
    console.print("try:           minicdn upload photo.jpg   (Ctrl-C stops the cluster)")
    sys.stdout.flush()


def cmd_component(args: argparse.Namespace) -> int:
    from minicdn import runner

    settings = load_settings(args.config)
    component = args.command
    setup_logging(settings.log, component)
    if component == "query-service":
        runner.run_query_service(settings, args.config, args.worker, args.ready_fd)
        return 0
    if component == "storage-node":
        lock_fds = tuple(int(fd) for fd in args.lock_fds.split(",") if fd)
        runner.run_storage_node(settings, args.config, args.worker, args.ready_fd, lock_fds)
        return 0
    runner.run_replicator(settings)
    return 0


async def cmd_url(args: argparse.Namespace) -> int:
    cluster = find_cluster(args.query_url, args.api_key, args.state_dir)
    params = {
        k: v
        for k, v in (("w", args.w), ("h", args.h), ("dpr", args.dpr), ("fmt", args.fmt), ("client_ip", args.client_ip))
        if v is not None
    }
    async with aiohttp.ClientSession() as session:
        found = await get_json(session, cluster, f"/v1/images/{args.image_id}/url", params)
    if args.json:
        render.emit_json(found)
    else:
        render.out().print(found["url"], markup=False, soft_wrap=True)
    return 0


async def cmd_bench(args: argparse.Namespace) -> int:
    from minicdn.bench.uploads import run_bench

    cluster = find_cluster(args.query_url, args.api_key, args.state_dir)
    # With --json, stdout carries the JSON document only: progress and the table go to stderr.
    shown = render.err() if args.json else render.out()
    if args.pipeline:
        from minicdn.bench.pipeline import run_pipeline_bench

        fig = await run_pipeline_bench(
            cluster,
            images=args.images,
            stored_gets=args.stored_gets,
            console=shown,
            with_100mp=not args.skip_100mp,
            keep=args.keep,
        )
        if args.json:
            render.emit_json({"figures": fig.values, "uploaded": len(fig.uploaded), "removed": fig.removed})
        return 0
    if args.peers:
        return await _bench_peers(args, cluster, shown)
    run = await run_bench(
        cluster,
        uploads=300 if args.uploads is None else args.uploads,
        concurrency=args.concurrency,
        lookups=args.lookups,
        gets=args.gets,
        console=shown,
        idle_uploads=args.idle_uploads,
        keep=args.keep,
    )
    if args.json:
        render.emit_json(run.as_json(args.concurrency))
    return 0


async def _bench_peers(args: argparse.Namespace, cluster: ClusterRef, shown: Console) -> int:
    from minicdn.bench.loadgen import pick
    from minicdn.bench.peers import ROWS, PeersOptions, run_peers_bench

    try:
        loader = pick(args.loader, args.duration or (1.0 if args.quick else 10.0), args.connections, args.threads)
    except ValueError as exc:
        err_console.print(f"[red]{exc}[/red]")
        return 2
    opts = PeersOptions(
        loader=loader,
        runs=args.runs or (1 if args.quick else 3),
        uploads=args.uploads or (20 if args.quick else 1000),
        concurrency=args.concurrency,
        photo=Path(args.photo) if args.photo else None,
        state_dir=Path(args.state_dir),
        keep=args.keep,
        rows=frozenset(r.strip() for r in args.rows.split(",") if r.strip()),
    )
    if unknown := opts.rows - ROWS:
        err_console.print(f"[red]--rows: unknown {', '.join(sorted(unknown))} (rows: {', '.join(sorted(ROWS))})[/red]")
        return 2
    run = await run_peers_bench(cluster, opts, shown)
    if args.json:
        render.emit_json(run.as_json(loader.description, opts.runs))
    return 0
