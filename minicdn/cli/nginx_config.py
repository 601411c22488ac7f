"""`minicdn nginx-config`: write the nginx configuration ``minicdn.nginx_config`` makes from a node's settings."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.config import load_settings
from minicdn.nginx_config import render, site


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "nginx-config", help="write an nginx config serving a node's published variants from disk, the rest by the node"
    )
    p.add_argument("--config", help="the node's TOML file (MINICDN_NODE_* env vars override it)")
    p.add_argument("--out", help="write here (default: standard output)")
    p.add_argument("--listen", default="80", help="nginx's listen address: PORT or HOST:PORT (default: 80)")
    p.add_argument("--workers", default="auto", help="nginx worker processes (default: auto, one per core)")
    p.add_argument(
        "--run-dir",
        default="",
        help="put nginx's pid, error log and temp files here, to run it unprivileged (default: nginx's own paths)",
    )
    p.add_argument("--access-log", default="", help="buffered access log file (default: none)")
    p.add_argument(
        "--site", action="store_true", help="only the node's part of an http {} block, for conf.d/ (not a whole config)"
    )
    p.add_argument("--server-name", default="", help="--site: the server_name (default: none, any name)")
    p.add_argument("--tls-cert", default="", help="--site: certificate file, when nginx terminates TLS")
    p.add_argument("--tls-key", default="", help="--site: its key file")


def cmd_nginx_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.site:
        text = site(
            settings,
            listen=args.listen,
            server_name=args.server_name,
            tls=(args.tls_cert, args.tls_key),
            access_log=args.access_log,
        )
    else:
        run_dir = Path(args.run_dir).absolute() if args.run_dir else None
        text = render(settings, listen=args.listen, workers=args.workers, run_dir=run_dir, access_log=args.access_log)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return 0
