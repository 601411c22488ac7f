"""`minicdn dev` starts truthfully, as a real subprocess: a taken port is named before anything starts,
and a component that fails during start-up stops the whole cluster with its name, exit and log lines.
(The clean start, banner only after every process is healthy, is in test_dev.py's end-to-end test.)"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

BOUND_S = 40


Family = dict[psutil.Process, str]
"""Every descendant `minicdn dev` had while it ran, with its command line as first seen."""


def run_dev(state: Path, port: int) -> tuple[subprocess.CompletedProcess[str], Family]:
    """Run `minicdn dev` to its exit, noting every descendant it had on the way (to check none outlives it)."""
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "minicdn.cli", "dev", "--state-dir", str(state), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
    )
    seen: Family = {}
    deadline = time.monotonic() + BOUND_S
    try:
        dev = psutil.Process(proc.pid)
        while proc.poll() is None:
            assert time.monotonic() < deadline, "minicdn dev neither started nor gave up"
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in dev.children(recursive=True):
                    if child not in seen:
                        seen[child] = _cmdline(child)
            time.sleep(0.1)
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), seen


def assert_nothing_left(state: Path, family: Family) -> None:
    _gone, alive = psutil.wait_procs(list(family), timeout=5)
    assert alive == [], f"left behind: {[(p.pid, p.name()) for p in alive]}"
    mentions = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if str(state) in " ".join(p.info["cmdline"] or []):
            mentions.append(p.info["pid"])
    assert mentions == [], f"processes still using {state}: {mentions}"
    assert not (state / "cluster.json").exists()


def test_a_taken_port_is_named_before_anything_starts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        done, family = run_dev(state, port)
    assert done.returncode == 2, done.stderr
    assert f"port {port} (the query service) is in use" in done.stderr
    assert "--port 0" in done.stderr
    assert "API key" not in done.stdout + done.stderr
    assert family == {}  # not a single process was started
    assert not state.exists()  # nor anything written
    assert_nothing_left(state, family)


def test_a_failing_component_stops_the_whole_start_up(tmp_path: Path) -> None:
    """eu-west-1's data directory is a plain file (a damaged state directory): the node cannot create its
    object folders and exits during start-up, after Postgres, NATS and the other processes were started."""
    state = tmp_path / "state"
    (state / "nodes").mkdir(parents=True)
    (state / "nodes" / "eu-west-1").write_text("not a directory")
    done, family = run_dev(state, 0)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "start-up failed: eu-west-1 exited with code 1" in done.stderr
    assert f"last lines of {state / 'logs' / 'eu-west-1.log'}" in done.stderr
    assert "FileExistsError" in done.stderr  # the node's own last log line, the cause (its lock file cannot be made)
    assert "API key" not in done.stdout + done.stderr and "dashboard" not in done.stdout
    for name in ("postgres", "nats-server", "us-east-1.toml", "ap-southeast-1.toml", "query.toml"):
        assert any(name in cmdline for cmdline in family.values()), f"{name} was started before the failure"
    assert_nothing_left(state, family)


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # gone, or a zombie, already
        return ""
