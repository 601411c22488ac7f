"""`minicdn keys create|list|revoke`: API-key management through the query service (admin key)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table

from minicdn.client import find_cluster, get_json, send_json


def add_parser(sub: Any, add_client_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys (needs an admin key)")
    actions = keys.add_subparsers(dest="keys_action", required=True)
    create = actions.add_parser("create", help="create a key; prints it once (only its hash is stored)")
    create.add_argument("name")
    create.add_argument(
        "--app", dest="app_id", help="add the key to this existing app (key rotation); default: a new app named NAME"
    )
    create.add_argument(
        "--scope", dest="scopes", action="append", choices=("app", "admin"), help="repeatable; default: app"
    )
    create.add_argument("--rate", type=float, dest="rate_per_s", help="requests/s for this key (0: unlimited)")
    create.add_argument(
        "--referer",
        dest="referers",
        action="append",
        default=[],
        help="hotlink allowlist of a new app: a site allowed to embed its images (repeatable)",
    )
    add_client_flags(create)
    lister = actions.add_parser("list", help="table of every key (never the secret)")
    add_client_flags(lister)
    revoke = actions.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    add_client_flags(revoke)


async def cmd_keys(args: argparse.Namespace, console: Console) -> int:
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
            console.print(f"key id {made['key_id']}, app {made['app_id']}, scopes {','.join(made['scopes'])}")
            console.print(made["api_key"], highlight=False, soft_wrap=True)
        elif args.keys_action == "list":
            data = await get_json(session, cluster, "/v1/keys")
            table = Table(title="minicdn API keys")
            for col in ("key id", "name", "app", "scopes", "rate/s", "created", "revoked"):
                table.add_column(col)
            for k in data["keys"]:
                table.add_row(
                    k["key_id"],
                    k["name"],
                    k["app_id"],
                    ",".join(k["scopes"]),
                    "default" if k["rate_per_s"] is None else f"{k['rate_per_s']:g}",
                    str(k["created_at"])[:19],
                    str(k["revoked_at"] or "")[:19],
                )
            console.print(table)
        else:
            done = await send_json(session, cluster, "DELETE", f"/v1/keys/{args.key_id}")
            console.print(f"revoked {done['key_id']} at {done['revoked_at']}")
    return 0
