"""The data-directory lock of a node of several processes (``dirlock.adopt``): the parent's descriptors, inherited by
its workers, are the lock; a process that merely opens the lock file cannot pass itself off as one of them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage_node.objects import dirlock

ADOPT = """
import sys
from storage_node.objects import dirlock
fds = tuple(int(fd) for fd in sys.argv[1].split(",") if fd)
try:
    dirlock.adopt(fds, *sys.argv[2:])
except dirlock.DirLocked as exc:
    print("refused", exc, flush=True)
    sys.exit(3)
print("adopted", flush=True)
sys.stdin.readline()  # hold until told
"""


def _worker(fds: tuple[int, ...], pass_fds: tuple[int, ...], *directories: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", ADOPT, ",".join(map(str, fds)), *map(str, directories)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        pass_fds=pass_fds,
    )


def test_a_worker_adopts_its_parents_lock_and_keeps_it_after_the_parent_lets_go(tmp_path: Path) -> None:
    data, cold = tmp_path / "data", tmp_path / "cold"
    lock = dirlock.acquire(data, cold)
    child = _worker(lock.fds, lock.fds, data, cold)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "adopted"
        lock.release()  # the parent gone (its descriptors closed): the worker's inherited ones still hold it
        with pytest.raises(dirlock.DirLocked):
            dirlock.acquire(data)
        with pytest.raises(dirlock.DirLocked):
            dirlock.acquire(cold)
    finally:
        child.kill()
        child.wait(timeout=10)
    dirlock.acquire(data, cold).release()  # the last holder gone: free


def test_a_process_that_opens_the_lock_file_itself_is_refused_naming_the_holder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    lock = dirlock.acquire(data)
    own = os.open(data / dirlock.LOCK_FILE, os.O_RDWR)  # the same file, another open: not the holder's lock
    other = os.open(tmp_path / "elsewhere", os.O_RDWR | os.O_CREAT)
    try:
        for fds in ((own,), (other,), ()):
            child = _worker(fds, fds, data)
            out, _ = child.communicate(timeout=30)
            assert child.returncode == 3 and out.startswith("refused"), out
            assert str(data) in out
        child = _worker((own,), (own,), data)
        out, _ = child.communicate(timeout=30)
        assert f"pid {os.getpid()}" in out, out  # the holder named
    finally:
        os.close(own)
        os.close(other)
        lock.release()
