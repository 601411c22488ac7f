"""Process and port helpers the services share with the tooling: a free loopback port, a child that dies
with its parent, and the command line of one of the project's own Python children."""

from __future__ import annotations

import contextlib
import ctypes
import random
import signal
import socket
import sys
from pathlib import Path


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range when there is room there: an outgoing
    connection takes its local port from that range, and could otherwise grab the port between this check
    and the server's bind."""
    low = _ephemeral_low()
    for _ in range(50):
        port = random.randint(10_000, low - 1) if low > 11_000 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port found")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0  # unknown: let the kernel choose


def die_with_parent() -> None:
    """preexec_fn: the kernel sends SIGTERM to the child when its parent goes away (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def python_module(module: str, *args: str) -> list[str]:
    """The command line running ``python -m module args`` in this interpreter with an isolated ``sys.path``: -P
    keeps the current directory off it, so a ``select.py`` or ``json.py`` there cannot shadow a module."""
    return [sys.executable, "-P", "-m", module, *args]
