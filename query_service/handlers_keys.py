"""Key management for operators (admin scope): POST /v1/keys, GET /v1/keys, DELETE /v1/keys/{key_id}.

The plaintext of a new key is returned once and never stored (only its SHA-256).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from common.db import api_keys as db_keys
from common.errors import InvalidRequest, NotFound
from common.events import KeyRevoked
from common.httpkit import json_response
from query_service import keys
from query_service.requests import read_json_object, remote_address

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
_KEY_ID_RE = re.compile(r"^[0-9a-f]{8}$")
_HOST_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _parse_create(body: dict[str, Any]) -> tuple[str, tuple[str, ...], str | None, float | None, tuple[str, ...]]:
    name = body.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidRequest("name: 1-64 letters, digits, spaces, '.', '_' or '-'")
    scopes = body.get("scopes", ["app"])
    if not isinstance(scopes, list) or not scopes or any(s not in db_keys.SCOPES for s in scopes):
        raise InvalidRequest("scopes must be a non-empty list of `app` and/or `admin`")
    app_id = body.get("app_id")
    if app_id is not None and (not isinstance(app_id, str) or not _KEY_ID_RE.match(app_id)):
        raise InvalidRequest("app_id must be an existing app id")
    rate = body.get("rate_per_s")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1e6):
        raise InvalidRequest("rate_per_s must be a number within 0..1000000 (0: unlimited)")
    referers = body.get("referers", [])
    if (
        not isinstance(referers, list)
        or len(referers) > 50
        or not all(isinstance(r, str) and _HOST_RE.match(r.lower()) for r in referers)
    ):
        raise InvalidRequest("referers must be a list of at most 50 host names")
    if referers and app_id is not None:
        raise InvalidRequest("referers are set when an app is created, not when a key joins one")
    return name, tuple(dict.fromkeys(scopes)), app_id, None if rate is None else float(rate), tuple(referers)


async def create_key(request: web.Request) -> web.Response:
    app = request.app
    actor = await app[keys.AUTH].required(request, scope="admin")
    name, scopes, app_id, rate, referers = _parse_create(await read_json_object(request))
    key, plaintext = await db_keys.create_key(
        app[keys.POOL],
        name,
        scopes,
        app_id=app_id,
        rate_per_s=rate,
        referers=referers,
        actor=actor,
        client_ip=remote_address(request),
    )
    return json_response(
        {
            "key_id": key.key_id,
            "api_key": plaintext,
            "name": key.name,
            "app_id": key.app_id,
            "scopes": list(key.scopes),
            "rate_per_s": key.rate_per_s,
            "referers": list(referers),
        },
        status=201,
    )


async def list_keys(request: web.Request) -> web.Response:
    await request.app[keys.AUTH].required(request, scope="admin")
    rows = await db_keys.list_keys(request.app[keys.POOL])
    return json_response({"keys": [{**row, "scopes": list(row["scopes"])} for row in rows]})


async def revoke_key(request: web.Request) -> web.Response:
    app = request.app
    actor = await app[keys.AUTH].required(request, scope="admin")
    key_id = request.match_info["key_id"]
    if not _KEY_ID_RE.match(key_id):
        raise NotFound("no such key")
    revoked_at = await db_keys.revoke_key(app[keys.POOL], key_id, actor=actor, client_ip=remote_address(request))
    app[keys.AUTH].revoke(key_id)
    # Every other query-service process drops it when this arrives; answered only once NATS has it.
    bus = app[keys.BUS]
    await bus.announce(bus.subjects.access_event(KeyRevoked.name), KeyRevoked(key_id), flush=True)
    return json_response({"key_id": key_id, "revoked_at": revoked_at})
