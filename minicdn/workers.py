"""Several processes of one service sharing its port (SO_REUSEPORT), started, watched and stopped by one parent:
what `minicdn query-service` runs when ``query.workers`` is more than one, and `minicdn storage-node` when
``node.workers`` is.

- The parent checks that the port is free (without SO_REUSEPORT, so it cannot join another instance's
  group of sockets), then starts each worker with the command it is given, passing the write end of a
  pipe. A worker binds with SO_REUSEPORT once its resources are open and writes one line to that pipe.
- Worker 0 (the primary) starts first, the others once it is ready: what it does before it serves (a node
  counts its disk, a query service applies migrations) is done before any other serves, so a node's usage
  counts what another process stores exactly once (``storage_node.worker_reports``).
- Start-up is all or nothing: a worker that exits before it is ready stops the others and the parent exits
  with its code (a bad config fails as a single process would).
- After start-up a worker that dies is started again with the same index (worker 0, the primary, stays the
  primary) after a delay that doubles from ``FIRST_DELAY_S`` to ``MAX_DELAY_S`` while it keeps dying.
- SIGTERM or SIGINT to the parent: SIGTERM to every worker, which stop listening and finish their requests;
  any left after ``stop_timeout_s`` are killed. Workers stay in the parent's process group, so whatever
  signals the group (a terminal's Ctrl-C, a supervisor cleaning up) reaches them too (a second stop signal
  changes nothing), and they die with the parent (PR_SET_PDEATHSIG) if it alone is killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from common.procs import die_with_parent

logger = logging.getLogger(__name__)
Command = Callable[[int, int], list[str]]  # (worker index, ready pipe's fd) -> the worker's command line
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 10.0
STABLE_S = 30.0  # a worker up this long before dying is restarted after FIRST_DELAY_S again
POLL_S = 0.1


class PortInUse(OSError):
    pass


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    ready_fd: int | None  # the pipe's read end, until the worker said it is ready
    started_at: float
    ready: bool = False


def check_port_free(host: str, port: int) -> None:
    """Raise PortInUse when something listens on ``host:port`` (a socket without SO_REUSEPORT: a second
    instance must fail here, not quietly share the port with the first)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # like the server: TIME_WAIT is not "in use"
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


def run_workers(count: int, command: Command, *, stop_timeout_s: float = 15.0, pass_fds: tuple[int, ...] = ()) -> int:
    """Run ``count`` workers until SIGTERM/SIGINT (0) or until one fails to start (its exit code, at least 1).
    ``pass_fds``: descriptors every worker inherits (a storage node's data-directory lock)."""
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    workers: dict[int, _Worker] = {}
    restarts: dict[int, tuple[float, float]] = {}  # index -> (start again at, the delay that was waited)
    started_up = False
    try:
        workers[0] = _launch(0, command, pass_fds)
        while not stopping:
            for worker in list(workers.values()):
                _read_ready(worker)
            if len(workers) == 1 < count and not started_up and workers[0].ready:
                for index in range(1, count):
                    workers[index] = _launch(index, command, pass_fds)
            if not started_up and len(workers) == count and all(w.ready for w in workers.values()):
                started_up = True
                logger.info("%d workers ready", count)
            now = time.monotonic()
            for index, worker in list(workers.items()):
                code = worker.proc.poll()
                if code is None:
                    continue
                _close(worker)
                del workers[index]
                if not started_up:
                    logger.error("worker %d exited with code %s during start-up: stopping", index, code)
                    return code if code > 0 else 1
                up_s = now - worker.started_at
                _last_at, last_delay = restarts.get(index, (0.0, 0.0))
                delay = FIRST_DELAY_S if up_s >= STABLE_S or not last_delay else min(2 * last_delay, MAX_DELAY_S)
                restarts[index] = (now + delay, delay)
                logger.warning(
                    "worker %d exited with code %s after %.1f s: restarting in %.1f s", index, code, up_s, delay
                )
            for index, (at, delay) in list(restarts.items()):
                if index not in workers and now >= at:
                    workers[index] = _launch(index, command, pass_fds)
                    restarts[index] = (at, delay)
            time.sleep(POLL_S)
        return 0
    finally:
        _stop_all(list(workers.values()), stop_timeout_s)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _launch(index: int, command: Command, pass_fds: tuple[int, ...] = ()) -> _Worker:
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen(
            command(index, write_fd),
            pass_fds=(write_fd, *pass_fds),
            preexec_fn=die_with_parent,
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)  # the worker holds its own copy: EOF here once it exits
    os.set_blocking(read_fd, False)
    return _Worker(index, proc, read_fd, time.monotonic())


def _read_ready(worker: _Worker) -> None:
    if worker.ready_fd is None:
        return
    try:
        data = os.read(worker.ready_fd, 64)
    except BlockingIOError:
        return
    if data:  # (EOF without a line: it exited before it was ready; poll() tells)
        worker.ready = True
        _close(worker)


def _close(worker: _Worker) -> None:
    if worker.ready_fd is not None:
        os.close(worker.ready_fd)
        worker.ready_fd = None


def _stop_all(workers: list[_Worker], timeout_s: float) -> None:
    for worker in workers:
        _close(worker)
        if worker.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for worker in workers:
        try:
            worker.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("worker %d did not stop within %.0f s: killed", worker.index, timeout_s)
            worker.proc.kill()
            worker.proc.wait()


def signal_ready(fd: int) -> None:
    """In a worker: tell the parent it serves (one line on the pipe, then closed)."""
    with contextlib.suppress(OSError):
        os.write(fd, b"ready\n")
    with contextlib.suppress(OSError):
        os.close(fd)
