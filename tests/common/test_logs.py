"""Log output: text or JSON lines carrying the request id and the access line's fields."""

from __future__ import annotations

import io
import json
import logging
import time

from common.config import LogSettings
from common.logs import FLUSH_S, make_handler
from common.reqlog import REQUEST_ID, adopt, clean_request_id


def _emit(settings: LogSettings, **extra: object) -> str:
    stream = io.StringIO()
    logger = logging.getLogger("minicdn.test-logs")
    logger.handlers[:] = [make_handler(settings, "storage-node", stream)]
    logger.propagate = False
    token = REQUEST_ID.set("rid-42")
    try:
        logger.warning("GET %s", "/i/x/w300.jpg", extra=extra)
    finally:
        REQUEST_ID.reset(token)
        logger.handlers[:] = []
    return stream.getvalue()


def test_json_lines_carry_the_request_id_and_fields() -> None:
    line = _emit(LogSettings(format="json"), route="/i/{image_id}/{variant}", status=200, bytes=123, duration_ms=1.5)
    entry = json.loads(line)
    assert entry["request_id"] == "rid-42"
    assert entry["component"] == "storage-node"
    assert entry["msg"] == "GET /i/x/w300.jpg"
    assert (entry["route"], entry["status"], entry["bytes"], entry["duration_ms"]) == (
        "/i/{image_id}/{variant}",
        200,
        123,
        1.5,
    )
    assert entry["level"] == "warning" and entry["ts"].endswith("Z")


def test_text_lines_show_the_request_id() -> None:
    line = _emit(LogSettings(format="text"))
    assert "storage-node WARNING minicdn.test-logs [rid-42]: GET /i/x/w300.jpg" in line


def test_request_ids_from_outside_are_checked() -> None:
    assert clean_request_id("abc-DEF_1.2:3") == "abc-DEF_1.2:3"
    for bad in ("", "with space", "x" * 65, "new\nline", 'quote"', None):
        assert clean_request_id(bad) is None
    assert adopt({"X-Request-Id": "from-msg"}) == "from-msg"
    assert len(adopt({"X-Request-Id": "bad id"})) == 16
    assert len(adopt(None)) == 16


def test_lines_wait_in_a_buffer_briefly_and_a_warning_flushes_at_once() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8", write_through=False)
    logger = logging.getLogger("minicdn.test-logs-buffered")
    logger.handlers[:] = [make_handler(LogSettings(), "storage-node", stream)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.info("an access line")
        deadline = time.monotonic() + 10 * FLUSH_S
        while b"an access line" not in raw.getvalue():  # out within the flush interval, without another line
            assert time.monotonic() < deadline, "an INFO line stayed in the buffer"
            time.sleep(0.01)
        logger.info("another")
        logger.warning("a warning")
        assert raw.getvalue().endswith(b"a warning\n") and b"another" in raw.getvalue()  # at once, in order
    finally:
        logger.handlers[:] = []
