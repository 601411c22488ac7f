"""Checking an original's bytes against its record: the SHA-256 and size recorded at ingest (in Postgres, and
copied into the sidecar when the file was written). Nothing here ever derives a record from the bytes.

- ``serve_check`` is the cheap check on every serve. It takes the ``os.stat_result`` of the descriptor
  about to be sent (a freshly opened one or a cached one alike): a size other than the record's is a
  corrupt copy, and a ``Stamp`` other than the last verified one means the bytes must be hashed again
  before they are sent.
- A ``Stamp`` (device, inode, size, change time) tells whether a file may have changed since it was
  hashed: every write through the file system moves ctime, which no process can set back. Decay under
  the file system (a bad sector) moves nothing: that is what the scrubber's continuous re-hash is for.
- ``verified_copy`` gives a decoder a private, sealed in-memory copy of the bytes it just hashed, so a
  file that changes between the check and the decode cannot slip through.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

BLOCK = 1024 * 1024
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


class Recorded(Protocol):
    """What the checks need of a record (``storage_node.objects.store.ObjectMeta`` is one)."""

    @property
    def sha256(self) -> str: ...

    @property
    def bytes(self) -> int: ...


@dataclass(frozen=True)
class Stamp:
    """One state of a file's bytes, as far as the file system can tell."""

    dev: int
    ino: int
    size: int
    ctime_ns: int


def stamp_of(st: os.stat_result) -> Stamp:
    return Stamp(st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns)


class OriginalMismatch(Exception):
    """An original's bytes are not the recorded ones. ``what`` is ``size`` or ``sha256``; ``expected`` and
    ``actual`` are printable (for the log line and the sandbox's answer); ``stamp``, when known, is the
    damaged file's."""

    def __init__(self, what: str, expected: str, actual: str, stamp: Stamp | None = None) -> None:
        super().__init__(f"{what} mismatch: recorded {expected}, found {actual}")
        self.what = what
        self.expected = expected
        self.actual = actual
        self.stamp = stamp

    def as_dict(self) -> dict[str, str]:
        return {"what": self.what, "expected": self.expected, "actual": self.actual}


def size_mismatch(meta: Recorded, size: int, stamp: Stamp | None = None) -> OriginalMismatch:
    return OriginalMismatch("size", f"{meta.bytes} bytes", f"{size} bytes", stamp)


def serve_check(st: os.stat_result, meta: Recorded, verified: Stamp | None) -> bool:
    """The check on every serve: raise OriginalMismatch when the opened file's size is not the record's;
    True when its bytes must be hashed before they are sent (not verified since they last changed)."""
    if st.st_size != meta.bytes:
        raise size_mismatch(meta, st.st_size, stamp_of(st))
    return stamp_of(st) != verified


def sha256_fd(fd: int) -> str:
    """SHA-256 of an open file from its start, with ``pread`` (the descriptor's offset is left alone, so the
    same descriptor can then be sent). Blocking."""
    digest = hashlib.sha256()
    offset = 0
    while block := os.pread(fd, BLOCK, offset):
        digest.update(block)
        offset += len(block)
    return digest.hexdigest()


def check_open(fd: int, st: os.stat_result, meta: Recorded, verified: Stamp | None) -> Stamp:
    """``serve_check`` and, when it asks, the full hash of the open file; returns the stamp now verified.
    Raises OriginalMismatch. Blocking."""
    if serve_check(st, meta, verified):
        actual = sha256_fd(fd)
        if actual != meta.sha256:
            raise OriginalMismatch("sha256", meta.sha256, actual, stamp_of(st))
    return stamp_of(st)


@contextlib.contextmanager
def verified_copy(path: Path, sha256: str, size: int) -> Iterator[Path]:
    """A private copy of ``path`` (an anonymous, sealed in-memory file, named by its ``/proc/self/fd`` path)
    whose bytes hash to ``sha256``: what a decoder is handed, so it decodes exactly the bytes that were
    checked. Raises OriginalMismatch (nothing is decoded) when the file is not ``size`` bytes hashing to
    ``sha256``; FileNotFoundError when it is gone. Blocking: one read of the file."""
    fd = os.memfd_create("original", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        digest = hashlib.sha256()
        copied = 0
        with path.open("rb") as src, open(fd, "wb", closefd=False) as out:
            # At most one block past the record: a file that grew is corrupt, however large it grew.
            while copied <= size and (block := src.read(BLOCK)):
                digest.update(block)
                out.write(block)
                copied += len(block)
        if copied != size:
            raise OriginalMismatch(
                "size", f"{size} bytes", f"{copied} bytes" if copied < size else f"over {size} bytes"
            )
        actual = digest.hexdigest()
        if actual != sha256:
            raise OriginalMismatch("sha256", sha256, actual)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)  # nothing, in this process or a child, can change it now
        yield Path(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
