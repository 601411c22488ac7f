"""CPU seconds a server spends, read from the kernel before and after a load: every process of its tree.

A server is one or more root processes (the listeners of a port, or processes the bench started) and all
their descendants, so a node that forks serving workers or sandbox workers is counted whole. Each process
counts its own user + system time and that of its children already reaped, so a child that exits during
the load is not lost. The bench's own process tree is not counted when a server is its ancestor (in a test
the cluster runs in the process that started the bench); servers the bench started are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import psutil


def listener_pids(port: int) -> set[int]:
    """Pids of the local processes listening on TCP ``port`` (several with SO_REUSEPORT); empty when none
    is visible (a remote cluster, or another user's processes)."""
    with contextlib.suppress(psutil.Error):
        return {
            c.pid
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
        }
    return set()


def _tree(roots: Iterable[int]) -> dict[int, psutil.Process]:
    procs: dict[int, psutil.Process] = {}
    me = psutil.Process()
    for pid in roots:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            tree = {p.pid: p for p in (root, *root.children(recursive=True))}
            if me.pid in tree:  # a server in an ancestor of the bench (a test's cluster): not the bench itself
                for p in (me, *me.children(recursive=True)):
                    tree.pop(p.pid, None)
            procs.update(tree)
    return procs


def _seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


@dataclass(frozen=True)
class Server:
    """A named group of process trees whose CPU time is read together (``roots`` may be empty: not local)."""

    name: str
    roots: frozenset[int]

    @classmethod
    def on_ports(cls, name: str, ports: Iterable[int]) -> Server:
        return cls(name, frozenset(pid for port in ports for pid in listener_pids(port)))

    @property
    def local(self) -> bool:
        return bool(self.roots)

    def cpu_seconds(self) -> dict[int, float]:
        """Pid -> CPU seconds so far, for every live process of the trees."""
        out: dict[int, float] = {}
        for pid, proc in _tree(self.roots).items():
            with contextlib.suppress(psutil.Error):
                out[pid] = _seconds(proc)
        return out


class CpuWindow:
    """CPU seconds each server used between ``start()`` and ``stop()``; a process born in between counts
    from zero, one gone in between is in its parent's reaped-children time."""

    def __init__(self, servers: Iterable[Server]) -> None:
        # A server whose processes an earlier one already counts (apps sharing one process, as in the tests'
        # cluster) is left out rather than counted twice.
        self.servers: list[Server] = []
        covered: set[int] = set()
        for s in servers:
            if s.local and not s.roots <= covered:
                self.servers.append(s)
                covered |= s.roots
        self._before: dict[str, dict[int, float]] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self._before = {s.name: s.cpu_seconds() for s in self.servers}

    def stop(self) -> dict[str, float]:
        for s in self.servers:
            # A process gone since start() was reaped by its parent in the tree, whose reaped-children time
            # now holds all of it: so its time before start() is subtracted too.
            self.used[s.name] = max(0.0, sum(s.cpu_seconds().values()) - sum(self._before[s.name].values()))
        return self.used
