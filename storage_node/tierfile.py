"""A file response over an original that may be switching tiers: it opens the first of its paths that
exists, so a read racing a move (which commits the new copy before it removes the old one) gets the whole
bytes from one tier or the other, never a 404. Or, given an ``OpenedFile`` (opened and checked by the
handler, ``open_first``), it sends exactly that descriptor."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.web_fileresponse import _FileResponseResult

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
    """Open the first of ``paths`` that exists (in rounds, like the response below); FileNotFoundError when
    none does. Blocking."""
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


class FallbackFileResponse(web.FileResponse):
    # ``_make_response`` is where aiohttp (3.10+) stats and opens the file, in an executor thread: retrying
    # there is the only place that closes the gap between choosing a path and opening it.
    def __init__(self, paths: Sequence[Path] | OpenedFile, **kwargs: Any) -> None:
        self._opened = paths if isinstance(paths, OpenedFile) else None
        paths = [paths.path] if isinstance(paths, OpenedFile) else list(paths)
        super().__init__(paths[0], **kwargs)
        self._paths = paths

    def _make_response(
        self, request: web.BaseRequest, accept_encoding: str
    ) -> tuple[_FileResponseResult, io.BufferedReader | None, os.stat_result, str | None]:
        if self._opened is not None:
            # Sent as opened and checked. The handler answered If-None-Match (with the content ETag) and
            # decided on Range; date preconditions are moot, as no Last-Modified is ever sent.
            opened, self._opened = self._opened, None
            return _FileResponseResult.SEND_FILE, opened.fobj, opened.st, None
        last: FileNotFoundError | None = None
        for _ in range(ROUNDS):
            for path in self._paths:
                self._path = path
                try:
                    return super()._make_response(request, accept_encoding)
                except FileNotFoundError as exc:
                    last = exc
        assert last is not None
        raise last
