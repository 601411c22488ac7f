"""A file response over an original that may be switching tiers: it opens the first of its paths that
exists, so a read racing a move (which commits the new copy before it removes the old one) gets the whole
bytes from one tier or the other, never a 404."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.web_fileresponse import _FileResponseResult

# A move and a move back could both land between two attempts only if both ran within the same
# millisecond; a few rounds over the paths cover that without looping forever on a deleted image.
ROUNDS = 3


class FallbackFileResponse(web.FileResponse):
    # ``_make_response`` is where aiohttp (3.10+) stats and opens the file, in an executor thread: retrying
    # there is the only place that closes the gap between choosing a path and opening it.
    def __init__(self, paths: Sequence[Path], **kwargs: Any) -> None:
        super().__init__(paths[0], **kwargs)
        self._paths = list(paths)

    def _make_response(
        self, request: web.BaseRequest, accept_encoding: str
    ) -> tuple[_FileResponseResult, io.BufferedReader | None, os.stat_result, str | None]:
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
