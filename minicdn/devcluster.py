"""`minicdn dev`: a whole multi-region cluster on this machine, on the embedded Postgres and NATS.

Every component runs as its own process with a generated TOML config (the same `minicdn
storage-node|query-service --config` a real deployment runs), started as children of this process
and stopped by it: on Ctrl-C/SIGTERM nodes and the query service stop first, then NATS, then
Postgres, and no process is left behind. State (database, stream, objects, keys) lives under the
state directory, so a restart keeps every image.

Start-up is truthful: the ports are checked before anything starts or is written (`PortsUnavailable`);
`start()` returns (and `cluster.json` is written) only once every process answers its health check;
a process that exits or stays unhealthy during start-up stops everything started so far and raises
`ProcessFailed` with its name, exit and last log lines.

Once started, `watch()` supervises every process (`minicdn.supervisor`): a death is reaped and reported (name,
pid, exit code or signal, log path) on the console and in ``<state>/logs/dev.log`` (and the dead process's own
log), and the process is started again, same command, ports and data, after a backoff
(`DevOptions.backoff`), unless `DevOptions.restart` is off (`minicdn dev --no-restart`). Postgres's
postmaster.pid left by a killed server is removed before its restart (`EmbeddedPostgres.spawn`); a node's
data-directory lock is an flock, freed by the kernel with its holder, so a restart only has to wait for it.

The API a test drives a running cluster with (the names: ``postgres``, ``nats``, ``query``, every node id):

- `DevCluster.process(name)` -> `ChildInfo` now: ``pid`` (None while down; a new one after a restart),
  ``restarts`` (relaunches so far), ``log`` (its log file), ``url``; `process_names()` lists the names.
- `DevCluster.deaths()` -> every `Death` reported so far (``name``, ``pid``, ``what`` such as
  ``was killed by SIGKILL``, ``log``, ``restart_in_s``).
- `DevCluster.http` maps the nodes (provisioned ones too) and ``query`` to their base URLs.
- `DevCluster.state` is the state directory (``logs/`` holds every log, ``dev.log`` the reports).
- Run ``watch()`` in a thread and end with `stop()`, which returns once every process is stopped; no
  restart happens after `stop()` began, and ``watch()`` returns by itself. Call `start()` and `stop()` from a
  thread that outlives the cluster (the main one): children get SIGTERM when the thread that started them
  ends (PR_SET_PDEATHSIG is per thread), which is also why ``watch()`` must run until `stop()` has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from common.config import Secret
from common.db.api_keys import create_key, new_plaintext
from common.geo import REGIONS
from common.procs import die_with_parent, free_port, python_module
from minicdn.embedded import EmbeddedNats, EmbeddedPostgres, ProcessFailed, describe_exit, stop_process, tail
from minicdn.supervisor import Backoff, ChildInfo, Death, Supervisor, reap

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
    start_timeout_s: float = 60.0  # every process healthy within this, else start-up fails
    restart: bool = True  # restart a process that dies (False: `--no-restart`, the death is only reported)
    backoff: Backoff = field(default_factory=Backoff)


@dataclass(frozen=True)
class PortUse:
    port: int
    purpose: str  # "the query service", "storage node us-east-1"
    problem: str  # "in use", or why the port cannot be listened on


class PortsUnavailable(Exception):
    """Ports `minicdn dev` needs cannot be listened on; raised before anything is started or written."""

    def __init__(self, host: str, uses: list[PortUse]) -> None:
        self.host, self.uses = host, uses
        listed = "; ".join(f"port {u.port} ({u.purpose}) is {u.problem}" for u in uses)
        super().__init__(f"cannot start on {host}: {listed}")


@dataclass(frozen=True)
class PlannedNode:
    node_id: str
    region: str
    set_no: int
    port: int


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
    try:
        if unit not in units:
            raise ValueError(unit)
        return int(float(number) * units[unit])
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 20MB, 1.5GiB, 500000)") from None


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


def _healthz(url: str) -> dict[str, Any] | None:
    """The body of ``url``/healthz when it answers 200 with JSON, else None."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as resp:
            return dict(json.loads(resp.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def port_problem(host: str, port: int) -> str | None:
    """Why nothing could listen on ``host:port`` now (None: it is free). SO_REUSEADDR as the servers set it,
    so a port left in TIME_WAIT by a previous run counts as free, as it is for them."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        return f"not usable: {host} does not resolve ({exc.strerror})"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return "in use" if exc.errno == errno.EADDRINUSE else f"not usable: {exc.strerror}"
    return None


class DevCluster:
    def __init__(self, options: DevOptions) -> None:
        self.opt = options
        self.state = options.state_dir.absolute()
        self.pg = EmbeddedPostgres(self.state / "pg")
        self.nats = EmbeddedNats(self.state / "nats")
        self.supervisor = Supervisor(self._report, options.restart, options.backoff)
        self.http: dict[str, str] = {}  # name -> base URL of every node and the query service
        self.info: dict[str, Any] = {}
        self.provisioned_dir = self.state / "provisioned"
        self.running = False  # anything started and not stopped yet
        # watch()'s steps and the start of stop() exclude each other: once stop() has begun nothing is started,
        # restarted or written to cluster.json; _stopped lets watch() return once everything is down.
        self._lock = threading.Lock()
        self._stopping = False
        self._stopped = threading.Event()

    def process(self, name: str) -> ChildInfo:
        """A supervised process as it is now (KeyError for an unknown name)."""
        return self.supervisor.info(name)

    def process_names(self) -> list[str]:
        """``postgres``, ``nats``, the nodes, ``query``, then provisioned nodes, in start order."""
        return self.supervisor.names()

    def deaths(self) -> list[Death]:
        """Every death reported since start-up, oldest first."""
        return list(self.supervisor.deaths)

    def _plan(self) -> tuple[int, list[PlannedNode]]:
        """The query service's port and every node's, fixed before anything starts."""
        count = 1 + self.opt.nodes_per_region * len(self.opt.regions)
        if self.opt.port == 0:
            ports: list[int] = []
            while len(ports) < count:  # free_port() may hand out a port twice once its probe is closed
                port = free_port()
                if port not in ports:
                    ports.append(port)
        else:
            ports = [self.opt.port + offset for offset in range(count)]
        nodes = []
        offset = 1
        for set_no in range(1, self.opt.nodes_per_region + 1):
            for region in self.opt.regions:
                nodes.append(PlannedNode(f"{region}-{set_no}", region, set_no, ports[offset]))
                offset += 1
        return ports[0], nodes

    def _check_ports(self, query_port: int, nodes: list[PlannedNode]) -> None:
        """Raise PortsUnavailable naming every port that cannot be listened on, incl. provisioned nodes'."""
        from common.config import load_settings

        wanted = [(query_port, "the query service")] + [(n.port, f"storage node {n.node_id}") for n in nodes]
        for cfg_path in sorted(self.provisioned_dir.glob("*.toml")):
            wanted.append((load_settings(cfg_path, env={}).node.port, f"provisioned storage node {cfg_path.stem}"))
        taken = []
        for port, purpose in wanted:
            problem = port_problem(self.opt.host, port)
            if problem:
                taken.append(PortUse(port, purpose, problem))
        if taken:
            raise PortsUnavailable(self.opt.host, taken)

    def start(self) -> dict[str, Any]:
        """Start everything and wait until every process is healthy. Raises PortsUnavailable (nothing was
        started or written) or ProcessFailed (everything started was stopped again)."""
        query_port, planned = self._plan()
        self._check_ports(query_port, planned)
        try:
            return self._start(query_port, planned)
        except BaseException:
            self.stop()  # a failure or Ctrl-C half-way: no process outlives the start-up
            raise

    def _start(self, query_port: int, planned: list[PlannedNode]) -> dict[str, Any]:
        self.running = True
        for sub in ("config", "logs"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        secrets_ = _load_secrets(self.state)
        self.pg.start()
        database_url = self.pg.create_database(DEV_DATABASE)
        self.supervisor.add("postgres", database_url, self.pg.log, self.pg.spawn, self.pg.proc)
        self.nats.start()
        self.supervisor.add("nats", self.nats.url, self.nats.log, self.nats.spawn, self.nats.proc)
        asyncio.run(self._bootstrap(database_url, secrets_["api_key"]))
        common: TomlSections = {
            "database": {"url": database_url},
            "nats": {"url": self.nats.url},
            "signing": {
                "keys": {secrets_["signing_kid"]: secrets_["signing_secret"]},
                "active_kid": secrets_["signing_kid"],
            },
            # A hung node is out of URLs and placement within 2 s; beats every 0.5 s (and the query service's
            # reload of the node table every 0.5 s) keep a live node fresh through a NATS or a Postgres outage.
            "health": {"heartbeat_timeout_s": 2.0},
            "geoip": {"db": self.opt.geoip_db},
        }
        query_url = f"http://{self.opt.host}:{query_port}"
        nodes = []
        for plan in planned:
            point = REGIONS[plan.region]
            url = f"http://{self.opt.host}:{plan.port}"
            set_id = f"set-{plan.set_no}"
            cfg: TomlSections = {
                **common,
                "node": {
                    "node_id": plan.node_id,
                    "region": plan.region,
                    "lat": point.lat,
                    "lon": point.lon,
                    "set_id": set_id,
                    "base_url": url,
                    "host": self.opt.host,
                    "port": plan.port,
                    "data_dir": str(self.state / "nodes" / plan.node_id),
                    "capacity_bytes": self.opt.node_capacity_bytes,
                    "heartbeat_interval_s": 0.5,
                    # No "workers": node.workers' default, one serving process per core, as a deployment runs.
                    # Ready for nginx in front (`minicdn nginx-config`), as a production node is: `minicdn bench
                    # --peers` measures it so.
                    "published_tree": True,
                },
                # Re-hash continuously: a pass over a small dev node takes seconds, so damage is found within
                # about 10 s plus one pass (at the default 8 MiB/s, 20 MB of originals take 2.5 s).
                "scrub": {"interval_s": 10.0},
            }
            self._spawn(plan.node_id, "storage-node", cfg, url)
            nodes.append({"node_id": plan.node_id, "region": plan.region, "set_id": set_id, "url": url})
        self._spawn(
            "query",
            "query-service",
            {
                **common,
                "query": {
                    "host": self.opt.host,
                    "port": query_port,
                    "public_url": query_url,
                    "upload_demo": True,
                    "node_refresh_s": 0.5,
                },
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
        self._wait_healthy(query_url, len(nodes))
        self.info = {
            "query_url": query_url,
            "dashboard_url": f"{query_url}/dashboard",
            "upload_demo_url": f"{query_url}/upload-demo",
            "api_key": secrets_["api_key"],
            "nodes": nodes,
        }
        self._write_info()  # only now: every process answered its health check
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
        self._supervise(name, command, cfg_path, url)

    def _supervise(self, name: str, command: str, cfg_path: Path, url: str) -> None:
        self.http[name] = url
        self.supervisor.add(name, url, self._log(name), partial(self._launch, name, command, cfg_path))

    def _launch(self, name: str, command: str, cfg_path: Path) -> subprocess.Popen[bytes]:
        """`minicdn <command> --config <cfg_path>` in its own session (so its leftovers can be killed as a
        group), output appended to its log."""
        with open(self._log(name), "ab") as log:
            return subprocess.Popen(
                python_module("minicdn.cli", command, "--config", str(cfg_path)),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
                start_new_session=True,
            )

    def _log(self, name: str) -> Path:
        return self.state / "logs" / f"{name}.log"

    def _report(self, message: str, own_log: Path, death: bool) -> None:
        """A death or a restart: on the console, in logs/dev.log, and at the end of the process's own log."""
        console.print(Text(message, style="red" if death else "green"), soft_wrap=True)
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {message}\n"
        with open(self.state / "logs" / "dev.log", "a") as log:
            log.write(line)
        with contextlib.suppress(OSError), open(own_log, "a") as own:
            own.write(f"--- minicdn dev: {line}")

    def _check_alive(self) -> None:
        """Raise ProcessFailed for the first process that has exited: Postgres and NATS first (started first),
        as the others exit when those do."""
        for name, proc in self.supervisor.procs().items():
            if proc.poll() is not None:
                log = self.supervisor.info(name).log
                raise ProcessFailed(name, describe_exit(proc.returncode), log, tail(log))

    def _wait_healthy(self, query_url: str, node_count: int) -> None:
        """Until every child answers /healthz and every query-service worker sees every node healthy
        (heartbeats arrive; each worker hears them itself, and a client may reach any of them); a process
        exiting meanwhile, or the timeout, fails the start-up."""
        from common.config import load_settings
        from minicdn.runner import query_workers

        workers = query_workers(load_settings(self.state / "config" / "query.toml", env={}))
        timeout_s = self.opt.start_timeout_s
        deadline = time.monotonic() + timeout_s
        pending = list(self.http)
        seen = 0
        ready: set[int] = set()  # the query workers that saw every node healthy
        while True:
            self._check_alive()
            pending = [name for name in pending if _healthz(self.http[name]) is None]
            if not pending:
                health = _healthz(query_url) or {}  # a new connection each time: any of the workers answers
                seen = int(health.get("healthy_nodes", 0))
                if seen >= node_count:
                    ready.add(int(health.get("worker", 0)))
                if len(ready) >= workers:
                    self._check_alive()
                    return
            if time.monotonic() > deadline:
                name = pending[0] if pending else "query"
                what = (
                    f"did not answer /healthz within {timeout_s:g} s"
                    if pending
                    else f"saw {seen} of {node_count} nodes healthy ({len(ready)} of {workers} workers saw them all)"
                    f" after {timeout_s:g} s"
                )
                raise ProcessFailed(name, what, self._log(name), tail(self._log(name)))
            time.sleep(0.2)

    def _start_provisioned(self) -> list[dict[str, Any]]:
        """Start a node for every config the local provisioner wrote that is not running yet."""
        from common.config import load_settings

        started = []
        for cfg_path in sorted(self.provisioned_dir.glob("*.toml")):
            name = cfg_path.stem
            if name in self.http:
                continue
            node = load_settings(cfg_path, env={}).node
            self._supervise(name, "storage-node", cfg_path, node.base_url)
            started.append(
                {"node_id": node.node_id, "region": node.region, "set_id": node.set_id, "url": node.base_url}
            )
        return started

    def _write_info(self) -> None:
        tmp = self.state / "cluster.json.tmp"
        tmp.write_text(json.dumps(self.info, indent=2))
        os.replace(tmp, self.state / "cluster.json")

    def watch(self, stop: threading.Event | None = None) -> None:
        """Supervise until ``stop`` is set or `stop()` has stopped the cluster: start nodes the capacity monitor
        provisions; reap, report and restart processes that die on their own."""
        while not self._stopped.wait(0.25):
            if stop is not None and stop.is_set():
                return
            with self._lock:
                if self._stopping:
                    continue
                for node in self._start_provisioned():
                    console.print(
                        f"[green]provisioned[/green] {node['node_id']} ({node['region']}, {node['set_id']}) "
                        f"at {node['url']}"
                    )
                    self.info.setdefault("nodes", []).append(node)
                    self._write_info()
                self.supervisor.check()

    def stop(self) -> None:
        """Stop everything: nodes and the query service, then NATS, then Postgres. Nothing is restarted once
        this has begun (a restart under way finishes first, and is stopped with the rest)."""
        with self._lock:
            self._stopping = True
            self.supervisor.close()
            (self.state / "cluster.json").unlink(missing_ok=True)
        procs = self.supervisor.procs()
        for proc in procs.values():
            reap(proc)  # one that died unnoticed: reaped, and what is left of its process group killed
        children = [proc for name, proc in procs.items() if name in self.http]
        for proc in children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in children:
            stop_process(proc, signal.SIGTERM, timeout_s=15)
        self.nats.stop()
        self.pg.stop()
        self.running = False
        self._stopped.set()
