"""The supervisor on real, tiny processes: deaths reaped and reported, backoff doubling to its cap and reset
after a stable run, restarts off, leftovers of a process group killed, and nothing launched after close()."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from minicdn.embedded import process_state
from minicdn.supervisor import Backoff, Supervisor

BOUND_S = 10
FAST = Backoff(first_s=0.05, max_s=0.2, stable_s=60)


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, bool]] = []

    def __call__(self, message: str, log: Path, death: bool) -> None:
        self.lines.append((message, death))


def launcher(code: str, launches: list[int] | None = None) -> Callable[[], subprocess.Popen[bytes]]:
    def launch() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-P", "-c", code], start_new_session=True)
        if launches is not None:
            launches.append(proc.pid)
        return proc

    return launch


def check_until(sup: Supervisor, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + BOUND_S
    while not done():
        assert time.monotonic() < deadline, sup.deaths
        sup.check()
        time.sleep(0.01)


SLEEPER = "import time; time.sleep(60)"


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "child.log"


def test_a_crash_loop_backs_off_doubling_to_the_cap(log: Path) -> None:
    report = Recorder()
    sup = Supervisor(report, restart=True, backoff=FAST)
    sup.add("crasher", "", log, launcher("import sys; sys.exit(3)"))
    try:
        check_until(sup, lambda: len(sup.deaths) >= 5)
    finally:
        sup.close()
    assert [d.restart_in_s for d in sup.deaths[:5]] == [0.05, 0.1, 0.2, 0.2, 0.2]
    assert {d.what for d in sup.deaths} == {"exited with code 3"}
    assert sup.info("crasher").restarts >= 4
    first = sup.deaths[0]
    assert report.lines[0] == (f"crasher (pid {first.pid}) exited with code 3; log: {log}; restarting in 0.05 s", True)
    assert any(death is False and message.startswith("restarted crasher (pid ") for message, death in report.lines)


def test_a_process_that_stayed_up_restarts_after_the_first_delay_again(log: Path) -> None:
    sup = Supervisor(Recorder(), restart=True, backoff=Backoff(first_s=0.05, max_s=0.2, stable_s=0))
    sup.add("crasher", "", log, launcher("import sys; sys.exit(1)"))
    try:
        check_until(sup, lambda: len(sup.deaths) >= 3)
    finally:
        sup.close()
    assert [d.restart_in_s for d in sup.deaths[:3]] == [0.05, 0.05, 0.05]


def test_with_restarts_off_a_death_is_reaped_and_reported_only(log: Path) -> None:
    report = Recorder()
    launches: list[int] = []
    sup = Supervisor(report, restart=False, backoff=FAST)
    sup.add("node", "http://x", log, launcher(SLEEPER, launches))
    pid = sup.info("node").pid
    assert pid is not None and launches == [pid]
    os.kill(pid, signal.SIGKILL)
    check_until(sup, lambda: bool(sup.deaths))
    end = time.monotonic() + 4 * FAST.max_s
    while time.monotonic() < end:  # several backoff periods: still no relaunch
        sup.check()
        time.sleep(0.02)
    sup.close()
    (death,) = sup.deaths
    assert (death.name, death.pid, death.what, death.restart_in_s) == ("node", pid, "was killed by SIGKILL", None)
    assert report.lines == [
        (f"node (pid {pid}) was killed by SIGKILL; log: {log}; not restarted (restarts are off)", True)
    ]
    assert launches == [pid] and sup.info("node").pid is None and sup.info("node").restarts == 0
    assert process_state(pid) is None  # reaped: no zombie left


def test_what_is_left_of_a_dead_process_group_is_killed(tmp_path: Path, log: Path) -> None:
    """Like Postgres's backends or a node's sandbox workers when their parent is SIGKILLed."""
    grandchild = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}]); "
        f"open({str(grandchild)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    sup = Supervisor(Recorder(), restart=False, backoff=FAST)
    sup.add("parent", "", log, launcher(code))
    deadline = time.monotonic() + BOUND_S
    while not grandchild.exists() or not grandchild.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    orphan = int(grandchild.read_text())
    pid = sup.info("parent").pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    check_until(sup, lambda: bool(sup.deaths))
    sup.close()
    deadline = time.monotonic() + BOUND_S
    while (state := process_state(orphan)) is not None and state[1] != "Z":  # a zombie until init reaps it
        assert time.monotonic() < deadline, f"the dead process's child {orphan} was left running"
        time.sleep(0.02)


def test_nothing_is_restarted_once_closed(log: Path) -> None:
    launches: list[int] = []
    sup = Supervisor(Recorder(), restart=True, backoff=FAST)
    sup.add("node", "", log, launcher(SLEEPER, launches))
    (pid,) = launches
    sup.close()
    os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 4 * FAST.max_s
    while time.monotonic() < end:
        assert sup.check() == []
        time.sleep(0.02)
    sup.add("late", "", log, launcher(SLEEPER, launches))  # e.g. a provisioned node seen while stopping
    assert launches == [pid] and sup.deaths == [] and sup.info("node").restarts == 0
    os.waitpid(pid, 0)
