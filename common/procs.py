"""Process and port helpers the services share with the tooling: a free loopback port, and a child that
dies with its parent."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """preexec_fn: the kernel sends SIGTERM to the child when its parent goes away (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
