"""What `upload()` accepts (a path, bytes, or a binary file object) turned into a body that streams in
chunks: a path or file object is never read whole into memory. A source can be rewound for a retry
when it is bytes, a path, or a seekable file object."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

CHUNK_BYTES = 256 * 1024

UploadSource = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO
Progress = Callable[[int, int | None], None]  # (bytes sent so far, total or None)


class Body:
    """One upload source: its size (None when unknown: the body goes chunked), a default filename and a
    fresh chunk stream per attempt."""

    def __init__(self, source: UploadSource) -> None:
        self._path: Path | None = None
        self._data: bytes | memoryview | None = None
        self._file: BinaryIO | None = None
        self._start = 0
        self.filename: str | None = None
        self.size: int | None = None
        if isinstance(source, str | os.PathLike):
            self._path = Path(source)
            self.size = self._path.stat().st_size
            self.filename = self._path.name
        elif isinstance(source, bytes | bytearray | memoryview):
            self._data = memoryview(source).cast("B")
            self.size = len(self._data)
        elif hasattr(source, "read"):
            self._file = source
            name = getattr(source, "name", None)
            self.filename = os.path.basename(name) if isinstance(name, str) else None
            self.size, self._start = _remaining(source)
        else:
            raise TypeError(f"upload() takes a path, bytes or a binary file object, not {type(source).__name__}")

    @property
    def rewindable(self) -> bool:
        return self._file is None or self.size is not None

    def chunks(self, on_progress: Progress | None = None) -> AsyncIterator[bytes]:
        return self._stream(on_progress)

    async def _stream(self, on_progress: Progress | None) -> AsyncIterator[bytes]:
        sent = 0
        if self._data is not None:
            for offset in range(0, len(self._data), CHUNK_BYTES):
                chunk = bytes(self._data[offset : offset + CHUNK_BYTES])
                sent += len(chunk)
                if on_progress:
                    on_progress(sent, self.size)
                yield chunk
            return
        fobj = self._path.open("rb") if self._path is not None else self._file
        assert fobj is not None
        try:
            if self._file is not None and self.size is not None:
                await asyncio.to_thread(fobj.seek, self._start)
            while chunk := await asyncio.to_thread(fobj.read, CHUNK_BYTES):
                sent += len(chunk)
                if on_progress:
                    on_progress(sent, self.size)
                yield chunk
        finally:
            if self._path is not None:
                fobj.close()


def _remaining(fobj: BinaryIO) -> tuple[int | None, int]:
    """Bytes left from the current position, and that position; (None, 0) for a stream that cannot seek."""
    try:
        if not fobj.seekable():
            return None, 0
        start = fobj.tell()
        end = fobj.seek(0, io.SEEK_END)
        fobj.seek(start)
        return end - start, start
    except (AttributeError, OSError):
        return None, 0
