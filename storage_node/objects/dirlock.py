"""One node process per data directory: an exclusive ``flock`` on a lock file in each of the node's directories
(``node.data_dir``, and ``node.cold_dir`` when set), taken before the node touches anything else on disk.

A second process started on a directory in use fails at once, naming the directory and the holder's pid,
before it could empty the live node's ``tmp/``. The kernel drops the lock with the process (a crash, a
SIGKILL), so a stale lock file never blocks a restart and nothing has to clean it up. The stand-alone
replicator shares its node's directory by design and takes no lock.

A node of several processes (``node.workers``) is one holder: their parent takes the lock and hands its
descriptors to every worker it starts (``adopt``), so the lock is held as long as any process of the node lives
(a parent killed while its workers finish does not free the directory early).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_FILE = "minicdn-node.lock"


class DirLocked(RuntimeError):
    """Another live process holds the directory."""

    def __init__(self, directory: Path, holder_pid: int | None) -> None:
        self.directory = directory
        self.holder_pid = holder_pid
        holder = f"pid {holder_pid}" if holder_pid is not None else "a process whose pid it has not written yet"
        super().__init__(
            f"{directory} is in use by another storage node ({holder}; lock file {directory / LOCK_FILE}): "
            "one process per data directory"
        )


class DirLock:
    """The locks held on a node's directories; ``release`` (or the process's end) lets them go."""

    def __init__(self, fds: list[int]) -> None:
        self._fds = fds

    @property
    def fds(self) -> tuple[int, ...]:
        """The descriptors holding the locks (passed to a node's worker processes, for ``adopt``)."""
        return tuple(self._fds)

    def release(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)  # closing the descriptor drops its flock


def acquire(*directories: str | Path) -> DirLock:
    """Lock every directory (created when missing: nobody can hold a directory that does not exist yet), or
    raise ``DirLocked`` for the first one held elsewhere, keeping none. Empty entries are skipped."""
    fds: list[int] = []
    try:
        for directory in directories:
            if str(directory):
                fds.append(_lock(Path(directory).absolute()))
    except BaseException:
        DirLock(fds).release()
        raise
    return DirLock(fds)


def adopt(fds: tuple[int, ...], *directories: str | Path) -> DirLock:
    """In a worker of a node of several processes: the lock its parent took, through the descriptors it inherited
    (one per directory, in ``acquire``'s order). Raises ``DirLocked`` unless each is that directory's lock file and
    holds its lock: a process started by hand cannot pass itself off as a worker of a running node."""
    wanted = [Path(d).absolute() for d in directories if str(d)]
    if len(fds) != len(wanted) or not wanted:
        first = wanted[0] if wanted else Path(".").absolute()
        raise DirLocked(first, _holder(first))
    for fd, directory in zip(fds, wanted, strict=True):
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(directory / LOCK_FILE))
            if same:  # taking a lock this descriptor's open file already holds succeeds; another holder's fails
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            same = False
        if not same:
            raise DirLocked(directory, _holder(directory))
    return DirLock(list(fds))


def _holder(directory: Path) -> int | None:
    with contextlib.suppress(OSError), open(directory / LOCK_FILE, "rb") as fobj:
        return _read_pid(fobj.fileno())
    return None


def _lock(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    # No O_TRUNC: the holder's pid must still be there to be named when the lock is refused.
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        raise DirLocked(directory, holder) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip())
    return None
