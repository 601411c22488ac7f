"""Logging setup: text or JSON lines, each with the current request id (see common.reqlog). Secrets are
wrapped in config.Secret and so print as asterisks."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import time
from typing import Any

from common.config import LogSettings
from common.reqlog import RequestIdFilter

# Structured fields that access lines (and any `extra=`) may carry into the JSON output.
EXTRA_FIELDS = (
    "component",
    "method",
    "path",
    "route",
    "status",
    "bytes",
    "duration_ms",
    "remote",
    "image_id",
    "node_id",
)


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str = "") -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "component": self.component,
        }
        for name in EXTRA_FIELDS:
            if name in record.__dict__:
                entry[name] = record.__dict__[name]
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


FLUSH_S = 0.25  # how long an INFO line (an access line) may wait in the buffer


class LazyFlushHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Lines go to the stream's buffer at once and out with the next WARNING or above, or within ``FLUSH_S``
    (nginx's buffered access log): one write per line, an access line per request, would be a syscall each."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        threading.Thread(target=self._flush_forever, name="log-flush", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self.flush()
        except Exception:
            self.handleError(record)

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_S)
            self.flush()


class TextFormatter(logging.Formatter):
    """logging's text format, with the time's seconds formatted once a second (a strftime per line is a
    noticeable share of an access line's cost)."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second, self._text = -1, ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second, self._text = second, time.strftime(self.default_time_format, self.converter(second))
        return f"{self._text},{int(record.msecs):03d}"


def make_handler(settings: LogSettings, component: str, stream: Any = None) -> logging.Handler:
    """To ``stream``, or to stderr through a buffer of its own (stderr writes each line at once)."""
    if stream is None:
        stream = io.TextIOWrapper(sys.stderr.buffer, encoding="utf-8", errors="backslashreplace", write_through=False)
    handler = LazyFlushHandler(stream)
    if settings.format == "json":
        handler.setFormatter(JsonFormatter(component))
    else:
        handler.setFormatter(
            TextFormatter(f"%(asctime)s {component} %(levelname)s %(name)s [%(request_id)s]: %(message)s")
        )
    handler.addFilter(RequestIdFilter())
    return handler


def setup_logging(settings: LogSettings, component: str) -> None:
    # Nothing we write shows the caller's file and line, thread or process: not gathered for every record (the
    # logging HOWTO's "Optimization" section; an access line costs about half as much).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [make_handler(settings, component)]
    root.setLevel(settings.level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("minicdn.access").setLevel(logging.INFO if settings.access else logging.WARNING)
