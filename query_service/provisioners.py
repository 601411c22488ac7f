"""Provisioner plugins: turn a plan (new nodes: id, region, set, coordinates) into running nodes.

- ``local``: writes each new node's complete TOML config (free port, own data dir) into
  ``provisioner.local_dir``; the supervisor of that directory (``minicdn dev``, or the test cluster)
  starts a storage-node process for each new file. Idempotent: an existing config is kept.
- ``command``: runs an operator program (e.g. a Terraform wrapper) with the plan as JSON on stdin
  and ``MINICDN_PLAN_ID``/``MINICDN_PLAN_KIND``/``MINICDN_SET_ID`` in its environment; exit 0 accepts.
- ``webhook``: POSTs the plan as JSON, signed (``X-Minicdn-Signature: <kid>:<hex hmac-sha256>``); 2xx accepts.

A provisioner only has to *start* nodes: they register themselves and the capacity monitor marks the
provisioning `succeeded` when every planned node heartbeats (or `failed` after the timeout). The
``plan_id`` is stable across a leader's crash and restart, so a command or webhook can deduplicate.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from common.config import NodeSettings, Settings
from common.procs import free_port


@dataclass(frozen=True)
class PlannedNode:
    node_id: str
    region: str
    set_id: str
    lat: float
    lon: float
    replaces: str | None = None


@dataclass(frozen=True)
class Plan:
    plan_id: int
    kind: str  # new_set | replace
    set_id: str
    reason: str
    nodes: tuple[PlannedNode, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan_id": self.plan_id,
            "kind": self.kind,
            "set_id": self.set_id,
            "reason": self.reason,
            "nodes": [asdict(n) for n in self.nodes],
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Plan:
        return cls(
            int(raw["plan_id"]),
            raw["kind"],
            raw["set_id"],
            raw["reason"],
            tuple(PlannedNode(**n) for n in raw["nodes"]),
        )


class ProvisionError(Exception):
    """The provisioner refused or failed the plan (message says why)."""


class Provisioner(Protocol):
    name: str

    async def provision(self, plan: Plan) -> str:
        """Start the plan's nodes (or have them started); returns a short outcome. Raises ProvisionError."""
        ...


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def node_config_toml(settings: Settings, node: PlannedNode, port: int, data_dir: Path, capacity_bytes: int) -> str:
    """A complete storage-node config sharing this cluster's database, NATS, signing keys and timings."""
    host = settings.provisioner.local_host
    sections: dict[str, dict[str, Any]] = {
        "database": {"url": settings.database.url.reveal()},
        "nats": {
            "url": settings.nats.url,
            "stream": settings.nats.stream,
            "subject_prefix": settings.nats.subject_prefix,
        },
        "signing": {
            "keys": {k: v.reveal() for k, v in settings.signing.keys.items()},
            "active_kid": settings.signing.active_kid,
        },
        "health": {"heartbeat_timeout_s": settings.health.heartbeat_timeout_s},
        "node": {
            "node_id": node.node_id,
            "region": node.region,
            "lat": node.lat,
            "lon": node.lon,
            "set_id": node.set_id,
            "base_url": f"http://{host}:{port}",
            "host": host,
            "port": port,
            "data_dir": str(data_dir),
            "capacity_bytes": capacity_bytes,
            # Several beats per timeout (the default interval is sized for the default timeout).
            "heartbeat_interval_s": min(NodeSettings().heartbeat_interval_s, settings.health.heartbeat_timeout_s / 4),
        },
        "geoip": {"db": settings.geoip.db},
        "log": {"level": settings.log.level, "format": settings.log.format},
    }
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)


class LocalProvisioner:
    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = Path(settings.provisioner.local_dir).absolute()

    def _write(self, plan: Plan) -> list[str]:
        self.dir.mkdir(parents=True, exist_ok=True)
        written = []
        for node in plan.nodes:
            path = self.dir / f"{node.node_id}.toml"
            if path.exists():
                continue  # a retried plan (leader restarted): the node is already configured
            text = node_config_toml(
                self.settings,
                node,
                free_port(),
                self.dir / node.node_id,
                self.settings.provisioner.local_node_capacity_bytes,
            )
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.chmod(0o600)  # holds the signing secret and the database URL
            os.replace(tmp, path)  # the supervisor only ever sees complete files
            written.append(node.node_id)
        return written

    async def provision(self, plan: Plan) -> str:
        try:
            written = await asyncio.to_thread(self._write, plan)
        except OSError as exc:
            raise ProvisionError(f"cannot write node configs to {self.dir}: {exc}") from None
        return f"configs for {', '.join(written) or 'no new node'} in {self.dir}"


class CommandProvisioner:
    name = "command"

    def __init__(self, settings: Settings) -> None:
        self.argv = shlex.split(settings.provisioner.command)
        self.timeout_s = settings.provisioner.timeout_s

    async def provision(self, plan: Plan) -> str:
        env = {
            **os.environ,
            "MINICDN_PLAN_ID": str(plan.plan_id),
            "MINICDN_PLAN_KIND": plan.kind,
            "MINICDN_SET_ID": plan.set_id,
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            raise ProvisionError(f"cannot run {self.argv[0]}: {exc}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(json.dumps(plan.to_dict()).encode()), self.timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ProvisionError(f"{self.argv[0]} did not finish within {self.timeout_s}s") from None
        if proc.returncode != 0:
            raise ProvisionError(f"{self.argv[0]} exited {proc.returncode}: {err.decode(errors='replace')[-300:]}")
        return (out.decode(errors="replace").strip()[-300:]) or f"{self.argv[0]} accepted the plan"


class WebhookProvisioner:
    name = "webhook"

    def __init__(self, settings: Settings) -> None:
        self.url = settings.provisioner.webhook_url
        self.timeout_s = settings.provisioner.timeout_s
        self.kid = settings.signing.active_kid
        self.key = settings.signing_key(self.kid) or b""

    async def provision(self, plan: Plan) -> str:
        body = json.dumps(plan.to_dict()).encode()
        signature = hmac.new(self.key, body, hashlib.sha256).hexdigest()
        headers = {
            "Content-Type": "application/json",
            "X-Minicdn-Signature": f"{self.kid}:{signature}",
            "Idempotency-Key": f"minicdn-plan-{plan.plan_id}",
        }
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    self.url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
                ) as resp,
            ):
                text = (await resp.text())[:300]
                if resp.status >= 300:
                    raise ProvisionError(f"webhook answered {resp.status}: {text}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProvisionError(f"webhook failed: {exc!r}") from None
        return f"webhook accepted ({resp.status})"


def make_provisioner(settings: Settings) -> Provisioner | None:
    kind = settings.provisioner.kind
    if kind == "local":
        return LocalProvisioner(settings)
    if kind == "command":
        return CommandProvisioner(settings)
    if kind == "webhook":
        return WebhookProvisioner(settings)
    return None
