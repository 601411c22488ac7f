"""`minicdn dev`: a whole multi-region cluster on this machine, on the embedded Postgres and NATS.

Every component runs as its own process with a generated TOML config (the same `minicdn
storage-node|query-service --config` a real deployment runs), started as children of this process
and stopped by it: on Ctrl-C/SIGTERM nodes and the query service stop first, then NATS, then
Postgres, and no process is left behind. State (database, stream, objects, keys) lives under the
state directory, so a restart keeps every image.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from common.config import Secret
from common.db.api_keys import create_key, new_plaintext
from common.geo import REGIONS
from common.procs import die_with_parent, free_port
from minicdn.embedded import EmbeddedNats, EmbeddedPostgres, stop_process

console = Console(stderr=True)
DEV_DATABASE = "minicdn"


@dataclass(frozen=True)
class DevOptions:
    state_dir: Path
    regions: tuple[str, ...] = ("us-east", "eu-west", "ap-southeast")
    nodes_per_region: int = 1
    node_capacity_bytes: int = 0
    host: str = "127.0.0.1"
    port: int = 8080  # query service; nodes take the ports after it. 0: free ports everywhere
    geoip_db: str = ""


@dataclass(frozen=True)
class Child:
    name: str
    url: str
    proc: subprocess.Popen[bytes]


def parse_size(text: str) -> int:
    """`20MB`, `1.5GiB`, `500000` -> bytes."""
    units = {
        "": 1,
        "B": 1,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
        "TIB": 2**40,
    }
    raw = text.strip().upper().replace(" ", "")
    number = raw.rstrip("KMGTIB")
    unit = raw[len(number) :]
    if unit not in units or not number:
        raise ValueError(f"not a size: {text!r}")
    return int(float(number) * units[unit])


def _load_secrets(state_dir: Path) -> dict[str, str]:
    """The dev cluster's signing key and admin API key, kept so a restart keeps working URLs and keys."""
    path = state_dir / "dev-secrets.json"
    if path.exists():
        return dict(json.loads(path.read_text()))
    data = {"signing_kid": "dev1", "signing_secret": secrets.token_urlsafe(32), "api_key": new_plaintext()[1]}
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return data


TomlSections = dict[str, dict[str, object]]
"""A config file: ``[section]`` -> key -> value (a scalar, or a dict written as an inline table)."""


def _toml(sections: TomlSections) -> str:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            if isinstance(value, dict):
                inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
                lines.append(f"{key} = {{ {inner} }}")
            elif isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float, log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else ""
            raise RuntimeError(f"{url} exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return dict(json.loads(resp.read()))
        except (urllib.error.URLError, OSError, ValueError):
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s}s")


class DevCluster:
    def __init__(self, options: DevOptions) -> None:
        self.opt = options
        self.state = options.state_dir.absolute()
        self.pg = EmbeddedPostgres(self.state / "pg")
        self.nats = EmbeddedNats(self.state / "nats")
        self.children: list[Child] = []
        self.info: dict[str, Any] = {}
        self.provisioned_dir = self.state / "provisioned"

    def _port(self, offset: int) -> int:
        return free_port() if self.opt.port == 0 else self.opt.port + offset

    def start(self) -> dict[str, Any]:
        for sub in ("config", "logs"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        secrets_ = _load_secrets(self.state)
        self.pg.start()
        database_url = self.pg.create_database(DEV_DATABASE)
        self.nats.start()
        asyncio.run(self._bootstrap(database_url, secrets_["api_key"]))
        common: TomlSections = {
            "database": {"url": database_url},
            "nats": {"url": self.nats.url},
            "signing": {
                "keys": {secrets_["signing_kid"]: secrets_["signing_secret"]},
                "active_kid": secrets_["signing_kid"],
            },
            "health": {"heartbeat_timeout_s": 6.0},
            "geoip": {"db": self.opt.geoip_db},
        }
        query_port = self._port(0)
        query_url = f"http://{self.opt.host}:{query_port}"
        nodes = []
        offset = 1
        for set_no in range(1, self.opt.nodes_per_region + 1):
            for region in self.opt.regions:
                node_id, port = f"{region}-{set_no}", self._port(offset)
                offset += 1
                point = REGIONS[region]
                url = f"http://{self.opt.host}:{port}"
                cfg: TomlSections = {
                    **common,
                    "node": {
                        "node_id": node_id,
                        "region": region,
                        "lat": point.lat,
                        "lon": point.lon,
                        "set_id": f"set-{set_no}",
                        "base_url": url,
                        "host": self.opt.host,
                        "port": port,
                        "data_dir": str(self.state / "nodes" / node_id),
                        "capacity_bytes": self.opt.node_capacity_bytes,
                        "heartbeat_interval_s": 2.0,
                    },
                }
                self._spawn(node_id, "storage-node", cfg, url)
                nodes.append({"node_id": node_id, "region": region, "set_id": f"set-{set_no}", "url": url})
        self._spawn(
            "query",
            "query-service",
            {
                **common,
                "query": {"host": self.opt.host, "port": query_port, "public_url": query_url, "upload_demo": True},
                # Automatic provisioning: the monitor writes new nodes' configs here, watch() starts them.
                "provisioner": {
                    "kind": "local",
                    "local_dir": str(self.provisioned_dir),
                    "local_node_capacity_bytes": self.opt.node_capacity_bytes,
                    "local_host": self.opt.host,
                },
                "capacity": {"interval_s": 2.0, "sample_interval_s": 10.0},
            },
            query_url,
        )
        nodes += self._start_provisioned()
        for child in self.children:
            _wait_http(f"{child.url}/healthz", child.proc, 60, self.state / "logs" / f"{child.name}.log")
        self._wait_all_healthy(query_url, len(nodes))
        self.info = {
            "query_url": query_url,
            "dashboard_url": f"{query_url}/dashboard",
            "upload_demo_url": f"{query_url}/upload-demo",
            "api_key": secrets_["api_key"],
            "nodes": nodes,
        }
        self._write_info()
        return self.info

    async def _bootstrap(self, database_url: str, api_key: str) -> None:
        """Apply migrations once and make sure the printed admin key exists."""
        from common.config import DatabaseSettings
        from common.db.pool import open_pool

        async with open_pool(DatabaseSettings(url=Secret(database_url), pool_min=1, pool_max=2)) as pool:
            await create_key(pool, "dev-admin", ("app", "admin"), plaintext=api_key, rate_per_s=0)  # bench: no limit

    def _spawn(self, name: str, command: str, config: TomlSections, url: str) -> None:
        cfg_path = self.state / "config" / f"{name}.toml"
        cfg_path.write_text(_toml(config))
        cfg_path.chmod(0o600)  # holds the signing secret
        with open(self.state / "logs" / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "minicdn.cli", command, "--config", str(cfg_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
                start_new_session=True,
            )
        self.children.append(Child(name, url, proc))

    def _wait_all_healthy(self, query_url: str, count: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        query = next(c for c in self.children if c.name == "query")
        while time.monotonic() < deadline:
            health = _wait_http(f"{query_url}/healthz", query.proc, 10, self.state / "logs" / "query.log")
            if health.get("healthy_nodes", 0) >= count:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the query service does not see {count} healthy nodes after {timeout_s}s")

    def _start_provisioned(self) -> list[dict[str, Any]]:
        """Start a node for every config the local provisioner wrote that is not running yet."""
        from common.config import load_settings

        running = {c.name for c in self.children}
        started = []
        for cfg_path in sorted(self.provisioned_dir.glob("*.toml")):
            name = cfg_path.stem
            if name in running:
                continue
            node = load_settings(cfg_path, env={}).node
            with open(self.state / "logs" / f"{name}.log", "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "minicdn.cli", "storage-node", "--config", str(cfg_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=die_with_parent,
                    start_new_session=True,
                )
            self.children.append(Child(name, node.base_url, proc))
            started.append(
                {"node_id": node.node_id, "region": node.region, "set_id": node.set_id, "url": node.base_url}
            )
        return started

    def _write_info(self) -> None:
        tmp = self.state / "cluster.json.tmp"
        tmp.write_text(json.dumps(self.info, indent=2))
        os.replace(tmp, self.state / "cluster.json")

    def watch(self, stop: Any) -> None:
        """Block until ``stop`` (a threading.Event) is set; start nodes the capacity monitor provisions;
        report children that die on their own."""
        reported: set[str] = set()
        while not stop.wait(0.5):
            for node in self._start_provisioned():
                console.print(
                    f"[green]provisioned[/green] {node['node_id']} ({node['region']}, {node['set_id']}) "
                    f"at {node['url']}"
                )
                self.info.setdefault("nodes", []).append(node)
                self._write_info()
            for child in self.children:
                if child.proc.poll() is not None and child.name not in reported:
                    reported.add(child.name)
                    console.print(
                        f"[red]{child.name} exited with {child.proc.returncode}; "
                        f"see {self.state / 'logs' / (child.name + '.log')}[/red]"
                    )

    def stop(self) -> None:
        (self.state / "cluster.json").unlink(missing_ok=True)
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in self.children:
            stop_process(child.proc, signal.SIGTERM, timeout_s=15)
        self.children = []
        self.nats.stop()
        self.pg.stop()
