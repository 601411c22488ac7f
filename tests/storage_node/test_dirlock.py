"""One process per data directory (``storage_node.objects.dirlock``): real flocks, held by real processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from storage_node.objects import dirlock

HOLD = """
import sys, time
from storage_node.objects import dirlock
dirlock.acquire(*sys.argv[1:])
print("held", flush=True)
time.sleep(60)
"""


@contextmanager
def _held_elsewhere(*directories: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the directories until the block ends (then SIGKILLed: no clean release)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, *map(str, directories)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_directory_held_by_a_live_process_is_refused_naming_it_and_the_pid(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with _held_elsewhere(data) as holder:
        with pytest.raises(dirlock.DirLocked) as refused:
            dirlock.acquire(data)
        assert refused.value.directory == data and refused.value.holder_pid == holder.pid
        assert str(data) in str(refused.value) and f"pid {holder.pid}" in str(refused.value)
    # The holder was SIGKILLed: the kernel dropped its lock, the stale file blocks nothing.
    assert (data / dirlock.LOCK_FILE).exists()
    lock = dirlock.acquire(data)
    lock.release()


def test_the_cold_directory_is_locked_too_and_a_refusal_keeps_nothing(tmp_path: Path) -> None:
    data, cold, other = tmp_path / "data", tmp_path / "cold", tmp_path / "other"
    with _held_elsewhere(cold):
        with pytest.raises(dirlock.DirLocked) as refused:
            dirlock.acquire(other, cold)
        assert refused.value.directory == cold
        dirlock.acquire(other).release()  # the refused call did not keep `other` locked
    lock = dirlock.acquire(data, cold, "")  # an empty entry (no cold tier) is skipped
    try:
        with pytest.raises(dirlock.DirLocked):
            dirlock.acquire(cold)  # a second open in the same process is refused as well
        assert (data / dirlock.LOCK_FILE).read_text().strip().isdigit()
    finally:
        lock.release()
    dirlock.acquire(data, cold).release()  # released: free again
