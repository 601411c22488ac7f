"""Keep `minicdn dev`'s processes running: reap and report every death, restart with backoff.

A `Supervisor` holds named child processes, each with the function that (re)launches it. `check()`, called
every fraction of a second by the dev cluster's watch loop, reaps a child that died (no zombie is left to hold
a pid file), kills what is left of its process group (Postgres backends, a node's sandbox workers: every
child runs in its own session), reports the death (name, pid, exit code or signal, log path) through the
``report`` callback, and relaunches it after a delay that starts at `Backoff.first_s` and doubles up to
`Backoff.max_s`; a child that stayed up `Backoff.stable_s` starts again from the first delay. With restarts
off the death is still reported and the child stays down.

`close()` ends supervision for good: from then on `check()` neither reports nor launches anything, so a
cluster being stopped never restarts what it is stopping. Launches and `close()` take the same lock.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from minicdn.embedded import describe_exit

Launch = Callable[[], "subprocess.Popen[bytes]"]
"""Starts the process (same command, ports and data every time) and returns it without waiting for it."""
Report = Callable[[str, Path, bool], None]
"""Called (under the supervisor's lock) with the message, the process's log, and whether it is a death (True) or
a restart (False)."""


@dataclass(frozen=True)
class Backoff:
    """Delays between restarts of a process that keeps dying."""

    first_s: float = 0.5
    max_s: float = 10.0
    stable_s: float = 30.0  # up at least this long before dying: the next restart waits first_s again


@dataclass(frozen=True)
class Death:
    """One reported death of a supervised process."""

    name: str
    pid: int | None  # None: a relaunch that failed before there was a process
    what: str  # "was killed by SIGKILL", "exited with code 1", "could not be started: ..."
    log: Path
    restart_in_s: float | None  # None: not restarted (restarts are off)

    @property
    def message(self) -> str:
        """``nats (pid 4242) was killed by SIGKILL; log: ...; restarting in 0.5 s``."""
        who = self.name if self.pid is None else f"{self.name} (pid {self.pid})"
        then = "not restarted (restarts are off)"
        if self.restart_in_s is not None:
            then = f"restarting in {self.restart_in_s:g} s"
        return f"{who} {self.what}; log: {self.log}; {then}"


@dataclass(frozen=True)
class ChildInfo:
    """A supervised process as it is now."""

    name: str
    url: str  # its HTTP base URL, or the postgresql:// or nats:// URL
    log: Path
    pid: int | None  # None while it is down, waiting to be restarted (or for good with restarts off)
    restarts: int  # how many times it was relaunched after a death


class _Child:
    def __init__(self, name: str, url: str, log: Path, launch: Launch) -> None:
        self.name, self.url, self.log, self.launch = name, url, log, launch
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.delay_s = 0.0
        self.restart_at: float | None = None


class Supervisor:
    def __init__(self, report: Report, restart: bool = True, backoff: Backoff = Backoff()) -> None:
        self.report, self.restart, self.backoff = report, restart, backoff
        self.deaths: list[Death] = []
        self._children: dict[str, _Child] = {}
        self._lock = threading.Lock()
        self._closed = False

    def add(self, name: str, url: str, log: Path, launch: Launch, proc: subprocess.Popen[bytes] | None = None) -> None:
        """Supervise ``name``: adopt ``proc`` when it was started already (and waited for), else launch it now."""
        with self._lock:
            if self._closed:
                return
            child = _Child(name, url, log, launch)
            child.delay_s = self.backoff.first_s
            self._children[name] = child
            if proc is None:
                proc = launch()
            child.proc, child.started_at = proc, time.monotonic()

    def names(self) -> list[str]:
        with self._lock:
            return list(self._children)

    def info(self, name: str) -> ChildInfo:
        """KeyError for a name never supervised."""
        with self._lock:
            child = self._children[name]
            proc = child.proc
            pid = proc.pid if proc is not None and proc.returncode is None else None
            return ChildInfo(child.name, child.url, child.log, pid, child.restarts)

    def procs(self) -> dict[str, subprocess.Popen[bytes]]:
        """Every child's current process (one that died shows until `check()` reaps it; none while down)."""
        with self._lock:
            return {c.name: c.proc for c in self._children.values() if c.proc is not None}

    def check(self) -> list[Death]:
        """Reap and report children that died since the last call; relaunch those whose delay is over."""
        found = []
        with self._lock:
            if self._closed:
                return []
            now = time.monotonic()
            for child in self._children.values():
                if child.proc is not None and (code := reap(child.proc)) is not None:
                    found.append(self._died(child, child.proc.pid, describe_exit(code), now))
                    child.proc = None
                if child.proc is None and child.restart_at is not None and now >= child.restart_at:
                    self._relaunch(child, now)
        return found

    def _died(self, child: _Child, pid: int | None, what: str, now: float) -> Death:
        if now - child.started_at >= self.backoff.stable_s:
            child.delay_s = self.backoff.first_s
        delay = child.delay_s if self.restart else None
        child.restart_at = None if delay is None else now + delay
        death = Death(child.name, pid, what, child.log, delay)
        self.deaths.append(death)
        self.report(death.message, child.log, True)
        return death

    def _relaunch(self, child: _Child, now: float) -> None:
        child.restart_at = None
        child.delay_s = min(child.delay_s * 2, self.backoff.max_s)
        child.restarts += 1
        try:
            child.proc = child.launch()
        except (OSError, RuntimeError) as exc:  # e.g. the binary is gone: a death like any other, retried later
            self._died(child, None, f"could not be started: {exc}", now)
            return
        child.started_at = now
        message = f"restarted {child.name} (pid {child.proc.pid}, restart {child.restarts}); log: {child.log}"
        self.report(message, child.log, False)

    def close(self) -> None:
        """No more reports or restarts, for good. Waits for a launch under way to finish."""
        with self._lock:
            self._closed = True


def reap(proc: subprocess.Popen[bytes]) -> int | None:
    """``proc``'s return code once it has exited (reaped, and the rest of its process group killed), else None.

    The group is killed while the leader is still an unreaped zombie: until it is reaped its pid, which is
    the group's id (every child starts in its own session), cannot be reused by another process."""
    if proc.returncode is not None:
        return proc.returncode
    try:
        exited = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped by a Popen method meanwhile
        return proc.poll()
    if exited is None:
        return None
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()
