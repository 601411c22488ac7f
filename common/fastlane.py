"""A fast lane in front of aiohttp for the requests a process answers most and can answer from memory (a node's
hits of its open-file cache, the query service's known URL lookups): an asyncio protocol in front of aiohttp's
own on every connection, which reads request heads itself and answers on the spot those its ``route`` takes,
with a pre-built header block and ``sendfile``. Every other request goes to aiohttp on the same connection,
whole and in order, and aiohttp answers it exactly as without the lane.

Why: aiohttp's per-request machinery (request and response objects, middlewares, signals, the access logger)
costs several times what a cached hit itself does; a hit through the lane costs one parse, a few dict lookups,
two writes and the record (the same access-log line and metrics as aiohttp's path: ``Recorder``).

Only GET and HEAD in HTTP/1.1 without a body take the lane; a head longer than ``MAX_HEAD`` or malformed is
aiohttp's to refuse. aiohttp's protocol keeps its own state private: the lane reads what it needs of it
(``_HANDLER_STATE``) and the site checks it is there, else serves through aiohttp alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from common import reqlog
from common.metrics import HttpMetrics
from common.reqlog import access_line

logger = logging.getLogger(__name__)

MAX_HEAD = 8190  # aiohttp's own default line limit: a longer head is its to refuse
_BODY_HEADERS = frozenset({"content-length", "transfer-encoding", "expect", "upgrade"})
_REASONS = {200: b"OK", 206: b"Partial Content", 304: b"Not Modified"}
_REQUEST_START = re.compile(rb"[A-Z]{1,16} |[A-Z]{0,16}\Z")  # a method and its space, or the start of one


@dataclass(frozen=True, slots=True)
class Head:
    """A request head the lane read: names lower-cased (a repeated header hands the request to aiohttp)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    remote: str = ""  # the TCP peer's address


@dataclass(slots=True)
class FileBody:
    """``count`` bytes of the open descriptor ``fd`` from ``offset``; ``release`` is called once they are out (or
    the connection is lost), never before."""

    fd: int
    offset: int
    count: int
    release: Callable[[], None]


@dataclass(slots=True)
class Answer:
    """What the route answers: ``headers`` is the block of header lines (each ending CRLF) the lane adds its own
    to (Content-Length, X-Request-Id, Date, Connection); ``route`` names the route template for logs and metrics."""

    status: int
    headers: bytes
    route: str
    body: bytes = b""
    file: FileBody | None = None

    @property
    def length(self) -> int:
        return self.file.count if self.file is not None else len(self.body)


Route = Callable[[Head], Answer | None]


@dataclass
class Lane:
    """What a process puts in its lane. ``closing``: whether answers now close their connection (a stopping
    node); ``busy``: +1 / -1 around an answer still being sent after the request's turn on the loop."""

    route: Route
    record: Callable[[Head, Answer, str, float], None]
    closing: Callable[[], bool] = lambda: False
    busy: Callable[[int], None] = lambda delta: None


class Recorder:
    """The access-log line and the request metrics aiohttp's path writes for a request (``common.reqlog``,
    ``common.metrics.HttpMetrics``), for one the lane answered. The counters are added in bulk (every
    ``BATCH`` requests, within ``FLUSH_S``, and before this process shows /metrics): each add is a locked write
    to a shared file in prometheus_client's multiprocess mode. Durations are observed one by one."""

    BATCH = 64
    FLUSH_S = 0.25

    def __init__(self, metrics: HttpMetrics, component: str) -> None:
        self.metrics, self.component = metrics, component
        self.log = reqlog.access_logger
        self._requests: dict[tuple[str, str, int], int] = {}
        self._bytes: dict[str, int] = {}
        self._held = 0
        self._timer: asyncio.TimerHandle | None = None
        metrics.before_scrape.append(self.flush)

    def __call__(self, head: Head, answer: Answer, rid: str, seconds: float) -> None:
        sent = 0 if head.method == "HEAD" or answer.status == 304 else answer.length
        metrics = self.metrics
        metrics.requests_seen += 1
        key = (answer.route, head.method, answer.status)
        self._requests[key] = self._requests.get(key, 0) + 1
        if sent:
            metrics.bytes_sent += sent
            self._bytes[answer.route] = self._bytes.get(answer.route, 0) + sent
        metrics.count_request(answer.route, head.method, answer.status, seconds, counted=False)
        self._held += 1
        if self._held >= self.BATCH:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.FLUSH_S, self.flush)
        if self.log.isEnabledFor(logging.INFO):
            access_line(
                self.log, self.component, head.method, head.path, answer.route, answer.status, sent, seconds, rid,
                head.remote,
            )  # fmt: skip

    def flush(self) -> None:
        """Add what is held to the counters."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        requests, self._requests = self._requests, {}
        sizes, self._bytes = self._bytes, {}
        self._held = 0
        for (route, method, status), n in requests.items():
            self.metrics.count_requests(route, method, status, n)
        for route, size in sizes.items():
            self.metrics.count_bytes(route, size)


class _Date:
    """The Date header, made once a second."""

    def __init__(self) -> None:
        self.second, self.line = -1, b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second, self.line = now, b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self.line


_date = _Date()


def parse_head(raw: bytes, remote: str = "") -> Head | None:
    """The head (without its final blank line) if the lane may take it: GET or HEAD, HTTP/1.1, no body, no
    repeated header, ASCII target. None: aiohttp's request."""
    lines = raw.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or parts[0] not in (b"GET", b"HEAD"):
        return None
    try:
        target = parts[1].decode("ascii")
    except UnicodeDecodeError:
        return None
    if not target.startswith("/"):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            return None
        key = name.decode("latin-1").lower()
        if key in headers or key in _BODY_HEADERS:
            return None
        headers[key] = value.strip().decode("latin-1")
    path, _, query = target.partition("?")
    return Head(parts[0].decode(), path, query, headers, remote)


class FastLaneProtocol(asyncio.Protocol):
    """One connection: the transport's protocol, in front of aiohttp's (``handler``), which it feeds every request
    the lane does not take, in order. The lane answers a request only while aiohttp has nothing to do on the
    connection (nothing queued, no request in hand), so answers never overtake each other; a request aiohttp is
    still busy before goes to aiohttp too. A request with a body (an upload), a head the lane cannot read or
    bytes that are not HTTP make the rest of the connection aiohttp's, exactly as it would have read it."""

    def __init__(self, lane: Lane, handler: RequestHandler) -> None:
        self.lane, self.handler = lane, handler
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()  # bytes not yet given to anyone: the start of a head, or pipelined requests
        self.aiohttp_only = False
        self.forwarded = 0  # requests given to aiohttp
        self.sending: asyncio.Task[None] | None = None  # a lane answer whose file is still going out
        self.remote = ""

    # --- the transport's calls, passed on to aiohttp's protocol ---------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple) else ""
        self.handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.sending is not None:
            self.sending.cancel()
        self.handler.connection_lost(exc)

    def eof_received(self) -> None:
        self.handler.eof_received()

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def data_received(self, data: bytes) -> None:
        if self.aiohttp_only:
            self.handler.data_received(data)
            return
        self.buffer += data
        self._serve()

    # --- the lane ----------------------------------------------------------------------------------------------
    def _aiohttp_idle(self) -> bool:
        h = self.handler
        if h._close or h._force_close:
            return False
        if not self.forwarded:
            return True
        waiter = h._waiter
        return waiter is not None and not waiter.done() and not h._messages

    def _serve(self) -> None:
        """The complete requests in the buffer, in order: answered in the lane or given to aiohttp."""
        while self.transport is not None and self.sending is None and self.buffer:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:  # the start of a head, or not HTTP (aiohttp's to refuse at once)
                if len(self.buffer) > MAX_HEAD or not _REQUEST_START.match(self.buffer):
                    self._aiohttp_for_good()
                return
            raw = bytes(self.buffer[:end]) if end <= MAX_HEAD else b""
            answer = self._route(raw) if raw and self._aiohttp_idle() else None
            if answer is not None:
                head, found = answer
                del self.buffer[: end + 4]
                self._answer(head, found)
                continue
            if not raw or not bodyless(raw):  # an upload and what follows it: aiohttp's, as without the lane
                self._aiohttp_for_good()
                return
            chunk = bytes(self.buffer[: end + 4])
            del self.buffer[: end + 4]
            self.forwarded += 1
            self.handler.data_received(chunk)

    def _route(self, raw: bytes) -> tuple[Head, Answer] | None:
        head = parse_head(raw, self.remote)
        if head is None:
            return None
        try:
            answer = self.lane.route(head)
        except Exception:  # the route's own error: aiohttp's path answers the request, and explains
            logger.exception("fast lane route failed; aiohttp answers")
            return None
        return None if answer is None else (head, answer)

    def _aiohttp_for_good(self) -> None:
        self.aiohttp_only = True
        data, self.buffer = bytes(self.buffer), bytearray()
        self.forwarded += 1
        if data:
            self.handler.data_received(data)

    def _answer(self, head: Head, answer: Answer) -> None:
        transport = self.transport
        assert transport is not None
        started = time.perf_counter()
        rid = reqlog.clean_request_id(head.headers.get("x-request-id")) or reqlog.new_request_id()
        close = self.lane.closing() or head.headers.get("connection", "").lower() == "close"
        bodyless = head.method == "HEAD" or answer.status == 304
        block = b"".join(
            (
                b"HTTP/1.1 %d %s\r\n" % (answer.status, _REASONS.get(answer.status, b"OK")),
                answer.headers,
                b"" if answer.status == 304 else b"Content-Length: %d\r\n" % answer.length,
                b"X-Request-Id: ",
                rid.encode(),
                b"\r\n",
                _date(),
                b"Connection: close\r\n\r\n" if close else b"\r\n",
            )
        )
        body = answer.file
        if bodyless or body is None:
            if body is not None:
                body.release()
            transport.write(block if bodyless else block + answer.body)
            self._done(head, answer, rid, started, close)
            return
        sent = _send_now(transport, block, body)
        if sent == body.count:
            body.release()
            self._done(head, answer, rid, started, close)
            return
        self.lane.busy(1)
        self.sending = asyncio.create_task(self._send_rest(head, answer, rid, started, close, sent))

    async def _send_rest(self, head: Head, answer: Answer, rid: str, started: float, close: bool, sent: int) -> None:
        body = answer.file
        assert body is not None
        try:
            transport = self.transport
            if transport is None:
                return
            loop = asyncio.get_running_loop()
            with os.fdopen(os.dup(body.fd), "rb") as fobj:  # loop.sendfile moves this file's position, not the fd's
                await loop.sendfile(transport, fobj, body.offset + sent, body.count - sent)
        except (OSError, RuntimeError) as exc:  # the client went away, or the transport closed meanwhile
            logger.debug("fast lane send failed: %r", exc)
            if self.transport is not None:
                self.transport.abort()
            return
        finally:
            body.release()
            self.lane.busy(-1)
            self.sending = None
        self._done(head, answer, rid, started, close)
        self._serve()

    def _done(self, head: Head, answer: Answer, rid: str, started: float, close: bool) -> None:
        self.lane.record(head, answer, rid, time.perf_counter() - started)
        h = self.handler
        if close:
            if self.transport is not None:
                self.transport.close()
            self.transport = None  # nothing more is read or answered on it
        elif h._keepalive_timeout:  # aiohttp's idle timer counts from this answer, not from its own last one
            h._next_keepalive_close_time = h._loop.time() + h._keepalive_timeout


def bodyless(raw: bytes) -> bool:
    """Whether the request whose head is ``raw`` ends with its head: HTTP/1.x, no Content-Length above 0, no
    Transfer-Encoding, no upgrade, no folded line (anything else is framed by aiohttp alone)."""
    lines = raw.split(b"\r\n")
    if not lines[0].endswith((b" HTTP/1.1", b" HTTP/1.0")):
        return False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key in (b"transfer-encoding", b"upgrade") or line[:1] in (b" ", b"\t"):
            return False
        if key == b"content-length" and value.strip() != b"0":
            return False
    return True


def _send_now(transport: asyncio.Transport, block: bytes, body: FileBody) -> int:
    """The header block, then as much of ``body`` as the socket takes now (``os.sendfile``), when nothing waits in
    the transport's buffer (the usual case); else the block is queued there and nothing of the body is sent. The
    block goes with MSG_MORE: the kernel sends it in one segment with the first bytes of the file."""
    # The transport's own socket (asyncio's selector transports keep it in ``_sock``; ``get_extra_info`` gives a
    # wrapper without ``send``). Another transport: the block through it, the body by the slow path.
    sock = getattr(transport, "_sock", None)
    if not isinstance(sock, socket.socket) or transport.get_write_buffer_size():
        transport.write(block)
        return 0
    fd, sent = sock.fileno(), 0
    try:
        written = sock.send(block, socket.MSG_MORE)
    except (BlockingIOError, InterruptedError):
        written = 0
    except OSError:  # the client went away: the slow path sees it too
        return 0
    if written < len(block):
        transport.write(block[written:])
        return 0
    try:
        while sent < body.count:
            n = os.sendfile(fd, body.fd, body.offset + sent, body.count - sent)
            if n == 0:
                break
            sent += n
    except OSError:  # full (EAGAIN), or the client went away: the slow path sends the rest, or sees that too
        pass
    return sent


class FastLaneSite(web.TCPSite):
    """A TCP site whose connections have the lane (``FastLaneProtocol``) in front of aiohttp's protocol."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, lane: Lane, **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.lane = lane

    async def start(self) -> None:
        server = self._runner.server
        assert server is not None
        if not _fits(server):  # another aiohttp than the one the lane was written against: aiohttp alone
            logger.warning("fast lane off: aiohttp %s lacks what it relies on", aiohttp.__version__)
            await super().start()
            return
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: FastLaneProtocol(self.lane, server()),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )


_HANDLER_STATE = ("_waiter", "_messages", "_close", "_force_close", "_keepalive_timeout", "_next_keepalive_close_time")


def _fits(server: web.Server) -> bool:
    """aiohttp's per-connection protocol has the state the lane reads (private: checked, not assumed)."""
    handler = server()
    return all(hasattr(handler, name) for name in _HANDLER_STATE)
