"""`minicdn dev` supervises what it starts, on real processes: nats-server, a node, the query service and Postgres
are SIGKILLed in turn on one small cluster, and each death is reported (name, pid, signal, log) and the process is
back on the same port and data within a bound; with `--no-restart` a killed node is reported and stays down; and
a `select.py` and a `json.py` in the current directory stop neither the cluster nor its sandbox workers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from minicdn import Client
from minicdn.devcluster import DevCluster, DevOptions
from minicdn.embedded import process_state

BACK_S = 30  # a killed process is running and answering again within this (Postgres recovers, a node starts)
START_S = 60


@pytest.fixture
def shadowing_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A current directory whose `select.py` and `json.py` would stop any Python started with it on sys.path."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for module in ("select", "json"):
        (cwd / f"{module}.py").write_text(f'raise SystemExit("{module}.py in the current directory was imported")\n')
    monkeypatch.chdir(cwd)
    return cwd


@pytest.fixture
def dev(tmp_path: Path, shadowing_cwd: Path) -> Iterator[DevCluster]:
    """Two regions, supervised by watch() in a thread; start() and stop() on this (the main) thread."""
    cluster = DevCluster(DevOptions(state_dir=tmp_path / "state", regions=("us-east", "eu-west"), port=0))
    cluster.start()
    watcher = threading.Thread(target=cluster.watch, name="dev-watch")
    watcher.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        watcher.join(10)
        assert not watcher.is_alive(), "watch() did not return after stop()"


def _healthz(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
            return dict(json.loads(resp.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _postgres_answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            return conn.execute("SELECT count(*) FROM nodes").fetchone() is not None
    except psycopg.OperationalError:
        return False


def _within(bound_s: float, what: str, done: Callable[[], bool]) -> float:
    started = time.monotonic()
    while not done():
        assert time.monotonic() - started < bound_s, f"{what} not within {bound_s} s"
        time.sleep(0.1)
    return time.monotonic() - started


def _kill_and_wait_back(cluster: DevCluster, name: str, back: Callable[[], bool]) -> None:
    before = cluster.process(name)
    assert before.pid is not None
    os.kill(before.pid, signal.SIGKILL)
    _within(BACK_S, f"{name} restarted", lambda: cluster.process(name).restarts > before.restarts)
    _within(BACK_S, f"{name} answering again", back)
    after = cluster.process(name)
    assert after.pid not in (None, before.pid) and after.url == before.url and after.log == before.log
    (death,) = [d for d in cluster.deaths() if d.pid == before.pid]
    assert (death.name, death.what) == (name, "was killed by SIGKILL") and death.restart_in_s is not None
    reported = f"{name} (pid {before.pid}) was killed by SIGKILL; log: {before.log}; restarting in "
    assert death.message.startswith(reported)
    assert death.message in (cluster.state / "logs" / "dev.log").read_text()
    assert death.message in before.log.read_text()  # also where its own output stopped
    assert process_state(before.pid) is None, "the dead process was not reaped"
    # Nothing left running of its process group (backends, sandbox workers, query/node workers): killed ones
    # may linger as zombies until this container's init reaps them, so only live members count.
    pgid = before.pid
    _within(BACK_S, f"{name}'s process group gone", lambda: not _running_in_group(pgid))


def _running_in_group(pgid: int) -> list[int]:
    running = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                running.append(proc.pid)
    return running


def test_each_killed_process_is_reported_and_back(dev: DevCluster, testdata: Path) -> None:
    info = dev.info
    assert dev.process_names() == ["postgres", "nats", "us-east-1", "eu-west-1", "query"]
    with Client(str(info["query_url"]), str(info["api_key"])) as cdn:
        # Processed to `ready` in the nodes' sandbox workers, started with select.py and json.py in their cwd.
        first = cdn.upload(testdata / "chelsea_gps.jpg", timeout=30)
        assert first.status == "ready"

        nats_port = int(dev.process("nats").url.rsplit(":", 1)[1])
        _kill_and_wait_back(dev, "nats", lambda: _accepts(nats_port))
        node_url = dev.process("eu-west-1").url
        _kill_and_wait_back(dev, "eu-west-1", lambda: _healthz(node_url) is not None)
        query_url = dev.process("query").url
        _kill_and_wait_back(dev, "query", lambda: (_healthz(query_url) or {}).get("healthy_nodes") == 2)
        database_url = dev.process("postgres").url
        _kill_and_wait_back(dev, "postgres", lambda: _postgres_answers(database_url))

        # The whole cluster serves again: a lookup of the first image, and a new upload through every process.
        with urllib.request.urlopen(cdn.url(first.id, w=200), timeout=10) as resp:
            assert resp.status == 200 and len(resp.read()) > 1000
        second = cdn.upload(testdata / "coins_gray.png", timeout=BACK_S)
        assert second.status == "ready"
    killed = [d.name for d in dev.deaths() if d.what == "was killed by SIGKILL"]
    assert killed == ["nats", "eu-west-1", "query", "postgres"]
    # Any other death was a consequence (a process that could not bear an outage), restarted like the rest.
    print("\ndeaths reported:", *(d.message for d in dev.deaths()), sep="\n  ")


def test_no_restart_reports_a_killed_node_and_leaves_it_down(tmp_path: Path, shadowing_cwd: Path) -> None:
    """The console script (as a user runs it), from a directory holding select.py and json.py."""
    script = Path(sys.executable).parent / "minicdn"
    assert script.exists(), "the minicdn console script is installed with the package"
    state = tmp_path / "state"
    args = [str(script), "dev", "--no-restart", "--regions", "us-east", "--port", "0", "--state-dir", str(state)]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "100"}
    )
    try:

        def ready() -> bool:
            if proc.poll() is not None:  # gave up: say why
                raise AssertionError((proc.stdout.read() if proc.stdout else b"").decode()[-3000:])
            return (state / "cluster.json").exists()

        _within(START_S, "the cluster ready", ready)
        node_url = json.loads((state / "cluster.json").read_text())["nodes"][0]["url"]

        def node_processes() -> list[psutil.Process]:
            found = []
            for child in psutil.Process(proc.pid).children():
                with contextlib.suppress(psutil.Error):
                    if "us-east-1.toml" in " ".join(child.cmdline()):
                        found.append(child)
            return found

        (node,) = node_processes()
        node.send_signal(signal.SIGKILL)
        reported = f"us-east-1 (pid {node.pid}) was killed by SIGKILL"
        dev_log = state / "logs" / "dev.log"
        _within(10, "the death reported", lambda: dev_log.exists() and reported in dev_log.read_text())
        time.sleep(2.0)  # four times the first restart delay: a restart would have happened by now
        assert node_processes() == [] and _healthz(node_url) is None
        assert "restarted us-east-1" not in dev_log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        printed = (proc.stdout.read() if proc.stdout else b"").decode()
        assert f"{reported}; log: {state / 'logs' / 'us-east-1.log'}; not restarted (restarts are off)" in printed
        assert "imported" not in printed and not (state / "cluster.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
