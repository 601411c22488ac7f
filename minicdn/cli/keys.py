"""`minicdn keys create|list|revoke`: API-key management through the query service (admin key)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import aiohttp
from rich.console import Console
from rich.markup import escape

from minicdn.cli import render
from minicdn.cli.render import Column
from minicdn.client import find_cluster, get_json, send_json

Formatter = render.HelpFormatter


def add_parser(sub: Any, add_client_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys (needs an admin key)")
    actions = keys.add_subparsers(dest="keys_action", required=True)
    create = actions.add_parser(
        "create", help="create a key; prints it once (only its hash is stored)", formatter_class=Formatter
    )
    create.add_argument("name", help="the key's name (and its new app's name)")
    create.add_argument(
        "--app", dest="app_id", help="add the key to this existing app (key rotation); default: a new app named NAME"
    )
    create.add_argument(
        "--scope", dest="scopes", action="append", choices=("app", "admin"), help="repeatable; default: app"
    )
    create.add_argument(
        "--rate",
        type=float,
        dest="rate_per_s",
        help="requests/s for this key (0: unlimited; default: the cluster's default rate)",
    )
    create.add_argument(
        "--referer",
        dest="referers",
        action="append",
        default=[],
        help="hotlink allowlist of a new app: a site allowed to embed its images (repeatable)",
    )
    render.add_json_flag(create, "the POST /v1/keys body (with the key itself in `api_key`)")
    add_client_flags(create)
    lister = actions.add_parser("list", help="every key (never the secret)", formatter_class=Formatter)
    render.add_json_flag(lister, "the GET /v1/keys body, {keys: [...]}")
    add_client_flags(lister)
    revoke = actions.add_parser("revoke", help="revoke a key by its id", formatter_class=Formatter)
    revoke.add_argument("key_id", help="the key's id (from `keys list`)")
    render.add_json_flag(revoke, "the DELETE /v1/keys/{id} body")
    add_client_flags(revoke)


KEY_COLUMNS = [
    Column("key id", keep=True),
    Column("name", keep=True, wrap=True),
    Column("scopes", keep=True),
    Column("state", keep=True),
    Column("rate/s", justify="right"),
    Column("created"),
    Column("app"),
    Column("revoked at"),
]


def key_rows(keys: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            k["key_id"],
            escape(k["name"]),
            ",".join(k["scopes"]),
            "revoked" if k["revoked_at"] else "active",
            "default" if k["rate_per_s"] is None else f"{k['rate_per_s']:g}",
            str(k["created_at"])[:16].replace("T", " "),
            k["app_id"],
            str(k["revoked_at"] or "-")[:16].replace("T", " "),
        ]
        for k in keys
    ]


async def cmd_keys(args: argparse.Namespace, console: Console | None = None) -> int:
    console = console or render.out()
    cluster = find_cluster(args.query_url, args.api_key, args.state_dir)
    async with aiohttp.ClientSession() as session:
        if args.keys_action == "create":
            body: dict[str, Any] = {"name": args.name, "scopes": args.scopes or ["app"]}
            for field in ("app_id", "rate_per_s"):
                if getattr(args, field) is not None:
                    body[field] = getattr(args, field)
            if args.referers:
                body["referers"] = args.referers
            made = await send_json(session, cluster, "POST", "/v1/keys", body)
            if args.json:
                render.emit_json(made)
                return 0
            console.print(
                f"key id {made['key_id']}, app {made['app_id']}, scopes {','.join(made['scopes'])}", markup=False
            )
            console.print(made["api_key"], markup=False, soft_wrap=True)
        elif args.keys_action == "list":
            data = await get_json(session, cluster, "/v1/keys")
            if args.json:
                render.emit_json(data)
                return 0
            render.print_records(console, KEY_COLUMNS, key_rows(data["keys"]))
        else:
            done = await send_json(session, cluster, "DELETE", f"/v1/keys/{args.key_id}")
            if args.json:
                render.emit_json(done)
                return 0
            console.print(f"revoked {done['key_id']} at {done['revoked_at']}", markup=False)
    return 0
