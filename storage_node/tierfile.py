"""Opening an original that may be switching tiers: the first of its paths that exists, in rounds, so a read
racing a move (which commits the new copy before it removes the old one) gets the whole bytes from one tier or
the other, never a 404. The descriptor is then checked and sent as it is (``storage_node.sendfile``)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# A move and a move back could both land between two attempts only if both ran within the same
# millisecond; a few rounds over the paths cover that without looping forever on a deleted image.
ROUNDS = 3


@dataclass(frozen=True)
class OpenedFile:
    """A file opened before its response is made, with the ``fstat`` of that very descriptor."""

    fobj: io.BufferedReader
    st: os.stat_result
    path: Path


def open_first(paths: Sequence[Path]) -> OpenedFile:
    """Open the first of ``paths`` that exists (in rounds); FileNotFoundError when none does. Blocking."""
    last: FileNotFoundError | None = None
    for _ in range(ROUNDS):
        for path in paths:
            try:
                fobj = path.open("rb")
            except FileNotFoundError as exc:
                last = exc
                continue
            try:
                return OpenedFile(fobj, os.fstat(fobj.fileno()), path)
            except BaseException:
                fobj.close()
                raise
    assert last is not None
    raise last
