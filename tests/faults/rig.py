"""The fault suite's cluster: one `minicdn dev` cluster (`DevCluster`, every component a real process, as
`minicdn dev` runs it: `start()`, then `watch()` on a thread) in a temp state directory, and what the faults
need of it: a process's current pid, signals, the supervisor's reported deaths, the configs and data
directories, a direct Postgres connection, and health probes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg

from common.config import Settings, load_settings
from minicdn.devcluster import DEV_DATABASE, DevCluster, DevOptions
from storage_node.objects.store import ORIGINAL, Store

PG, NATS = "postgres", "nats"  # the dev cluster's names for them


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set (children inherit it, and MINICDN_* variables override their config
    files), as it was afterwards: the rest of the test session runs in this process."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


class Rig:
    """One dev cluster, started and stopped from the thread that made it (the test session's main thread)."""

    def __init__(self, state: Path, geoip_db: str, node_capacity_bytes: int) -> None:
        self.state = state
        self.cluster = DevCluster(
            DevOptions(
                state_dir=state,
                port=0,
                geoip_db=geoip_db,
                node_capacity_bytes=node_capacity_bytes,
                start_timeout_s=120,
            )
        )
        self.info: dict[str, Any] = {}
        self._watch: threading.Thread | None = None

    # --- life -------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.info = self.cluster.start()
        # As `minicdn dev` does after start(): watch() supervises (reaps, reports, restarts) and starts provisioned
        # nodes. On a thread of its own until stop() has finished: restarted children die with the thread that
        # started them (PR_SET_PDEATHSIG), and watch() returns by itself once the cluster is stopped.
        self._watch = threading.Thread(target=self.cluster.watch, name="dev-watch", daemon=True)
        self._watch.start()

    def stop(self) -> None:
        self.cluster.stop()
        if self._watch is not None:
            self._watch.join(30)

    @property
    def query_url(self) -> str:
        return str(self.info["query_url"])

    @property
    def api_key(self) -> str:
        return str(self.info["api_key"])

    @property
    def db_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.cluster.pg.port}/{DEV_DATABASE}"

    def nodes(self) -> dict[str, str]:
        """node id -> base URL, of every node started so far (provisioned ones included)."""
        return {name: url for name, url in self.cluster.http.items() if name != "query"}

    # --- processes --------------------------------------------------------------------------------------
    def pid(self, name: str) -> int | None:
        """The current pid of ``name`` (a node id, "query", PG or NATS), None while it is down."""
        return self.cluster.process(name).pid

    def deaths(self) -> int:
        """How many deaths the supervisor has reaped and reported so far."""
        return len(self.cluster.deaths())

    def kill(self, name: str, sig: signal.Signals, group: bool = False) -> int:
        """Send ``sig`` to the process (a crash of Postgres's postmaster or of nats-server), or with ``group`` to
        its whole process group: a node is a parent with its workers and sandbox workers, all in the group the
        dev cluster started it in, and a node that crashes or hangs is all of them at once. The pid signalled."""
        pid = self.pid(name)
        assert pid is not None, f"{name} is not running, cannot send it {sig.name}"
        if group:
            os.killpg(os.getpgid(pid), sig)
        else:
            os.kill(pid, sig)
        return pid

    def wait_replaced(self, name: str, old_pid: int, bound_s: float) -> float | None:
        """Until ``name`` runs again under another pid (the supervisor restarted it); when, or None after the bound."""
        deadline = time.monotonic() + bound_s
        while time.monotonic() < deadline:
            pid = self.pid(name)
            if pid is not None and pid != old_pid:
                return time.monotonic()
            time.sleep(0.05)
        return None

    def serving(self, name: str) -> bool:
        """``name`` answers as it should: Postgres a query, NATS a TCP connect, a node or the query /healthz."""
        if name == PG:
            try:
                with psycopg.connect(self.db_url, connect_timeout=1) as conn:
                    conn.execute("SELECT 1")
                return True
            except psycopg.Error:
                return False
        if name == NATS:
            try:
                socket.create_connection(("127.0.0.1", self.cluster.nats.port), timeout=0.5).close()
                return True
            except OSError:
                return False
        url = self.query_url if name == "query" else self.nodes()[name]
        return healthz(url) is not None

    def wait_serving(self, name: str, bound_s: float) -> float | None:
        deadline = time.monotonic() + bound_s
        while time.monotonic() < deadline:
            if self.pid(name) is not None and self.serving(name):
                return time.monotonic()
            time.sleep(0.1)
        return None

    # --- configs, disks, database ------------------------------------------------------------------------
    def node_settings(self, node_id: str) -> Settings:
        """What the node runs with: its config file (dev's, or the local provisioner's), then the environment."""
        path = self.state / "config" / f"{node_id}.toml"
        if not path.exists():
            path = self.cluster.provisioned_dir / f"{node_id}.toml"
        return load_settings(path)

    def original_path(self, node_id: str, image_id: str) -> Path:
        return Store(self.node_settings(node_id).node.data_dir).path_for(image_id, ORIGINAL)

    def query_settings(self) -> Settings:
        return load_settings(self.state / "config" / "query.toml")

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of one query on a fresh connection (Postgres may have been restarted since the last one)."""
        with psycopg.connect(self.db_url, connect_timeout=3) as conn:
            return list(conn.execute(query, params).fetchall())


def healthz(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as resp:
            return dict(json.loads(resp.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def poll(check: Callable[[], bool], bound_s: float, every_s: float = 0.1) -> float | None:
    """Call ``check`` until it is true: the time it first was (monotonic), or None after ``bound_s``."""
    deadline = time.monotonic() + bound_s
    while True:
        if check():
            return time.monotonic()
        if time.monotonic() > deadline:
            return None
        time.sleep(every_s)
