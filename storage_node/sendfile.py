"""A response that sends a byte range of an already open file with ``loop.sendfile``, on the loop: no stat, no open
and no executor hop (aiohttp's ``FileResponse`` does both in a thread for every request).

The handler has decided everything first (``storage_node.handlers_read``: the ETag, 304, Range as 206/416 or the
whole file, the headers), so this only writes the status line and headers and then the bytes. It holds a reference
to the ``OpenFile`` until the bytes are out, so a drop of the cache entry meanwhile never closes the descriptor
under a ``sendfile``. Descriptors may be shared by concurrent responses: every read names its offset (``sendfile``
and ``pread``), none uses the file position.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import must_be_empty_body

from storage_node.objects.openfiles import OpenFile

CHUNK = 256 * 1024  # a read of the fallback (no native sendfile: TLS, say)


class SendFile(web.StreamResponse):
    """``count`` bytes of ``held`` from ``offset``: 200 for the whole file, 206 (with Content-Range) for a part."""

    def __init__(
        self, held: OpenFile, *, offset: int = 0, count: int | None = None, headers: Mapping[str, str] = {}
    ) -> None:
        count = held.size - offset if count is None else count
        partial = count != held.size
        super().__init__(status=206 if partial else 200, headers={**held.headers, **headers})
        if partial:
            self.headers["Content-Range"] = f"bytes {offset}-{offset + count - 1}/{held.size}"
        self.content_length = count
        self._held: OpenFile | None = held
        self._offset, self._count = offset, count

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        held, self._held = self._held, None
        if held is None:  # prepared already
            return await super().prepare(request)
        transport = request.transport
        body = self._count > 0 and not must_be_empty_body(request.method, self.status)
        sock = _plain_socket(transport) if body else None
        corked = sock is not None and _cork(sock, True)  # the headers wait for the body: one segment, not two
        try:
            writer = await super().prepare(request)
            if not body:
                return writer
            assert writer is not None
            if transport is None:
                raise ConnectionResetError("Connection lost")
            loop = asyncio.get_running_loop()
            offset, count = self._offset, self._count
            sent = _sendfile_now(transport, held, offset, count)
            if sent < count:
                try:
                    await loop.sendfile(transport, held.fobj, offset + sent, count - sent, fallback=False)
                except (NotImplementedError, RuntimeError):  # no native sendfile on this transport
                    self._offset, self._count = offset + sent, count - sent
                    await self._send_read(writer, held, loop)
            await self.write_eof()
            return writer
        finally:
            if corked:
                assert sock is not None
                _cork(sock, False)
            held.release()

    async def _send_read(self, writer: AbstractStreamWriter, held: OpenFile, loop: asyncio.AbstractEventLoop) -> None:
        offset, left, fd = self._offset, self._count, held.fobj.fileno()
        while left > 0:
            chunk = await loop.run_in_executor(None, os.pread, fd, min(CHUNK, left), offset)
            if not chunk:
                raise ConnectionResetError("file shorter than its size")
            await writer.write(chunk)
            offset += len(chunk)
            left -= len(chunk)
        await writer.drain()

    def release(self) -> None:
        """Give back the file when the response is dropped unsent (an error before it was prepared)."""
        held, self._held = self._held, None
        if held is not None:
            held.release()


def _plain_socket(transport: asyncio.BaseTransport | None) -> socket.socket | None:
    """The transport's socket when bytes may be written to it directly: not TLS (whose bytes must go through the
    transport), not closing."""
    if transport is None or transport.is_closing() or transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    return sock if isinstance(sock, socket.socket) or hasattr(sock, "setsockopt") else None


def _cork(sock: socket.socket, on: bool) -> bool:
    """TCP_CORK (nginx's ``tcp_nopush``): while on, the kernel holds partial segments, so the headers leave with
    the file's first bytes instead of in a packet of their own. False where it does not apply (not TCP)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, int(on))
    except OSError:
        return False
    return True


def _sendfile_now(transport: asyncio.BaseTransport, held: OpenFile, offset: int, count: int) -> int:
    """One ``os.sendfile`` straight to the socket when nothing is queued before it (the headers are out): a file
    that fits the socket's buffer leaves in one call, without ``loop.sendfile``'s set-up (pause reading, wait for
    the buffer, watch the socket, resume). Returns the bytes sent (0: the socket is full, or not a plain one)."""
    sock = _plain_socket(transport)
    if sock is None or not isinstance(transport, asyncio.WriteTransport) or transport.get_write_buffer_size() != 0:
        return 0
    try:
        return os.sendfile(sock.fileno(), held.fobj.fileno(), offset, count)
    except (BlockingIOError, InterruptedError):
        return 0
    except OSError as exc:
        raise ConnectionResetError(str(exc)) from exc
