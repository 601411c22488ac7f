"""The read path's two ends around the open-file cache (``storage_node.objects.openfiles``): answering a hit on the
loop (an ``fstat`` of the cached descriptor, then 304, 206/416 or 200 by ``loop.sendfile``), and keeping what a miss
opened, with its headers made once.

A hit is checked like a miss: the descriptor's file must not have been unlinked or changed size, and an original's
stat must pass ``verify.serve_check`` against its record (its size, and bytes unchanged since they were hashed).
A hit that fails any check is dropped and the request takes the miss path, which opens, checks (and hashes, or
reports a damaged copy) in a thread. Who may read (signature, gate, hotlink, a copy known damaged) is decided by
the handler before the cache is asked.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Mapping

from aiohttp import web

from common.errors import RangeNotSatisfiable
from storage_node.objects.openfiles import OpenFile, OpenFiles
from storage_node.objects.store import ORIGINAL, ObjectMeta, Store
from storage_node.objects.verify import OriginalMismatch, serve_check
from storage_node.sendfile import SendFile

_SINGLE_RANGE_RE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})", re.ASCII | re.IGNORECASE)
NOT_IN_304 = frozenset({"Content-Type", "Accept-Ranges"})


def not_modified(request: web.Request, etag: str) -> bool:
    return any(tag.value in (etag, "*") for tag in request.if_none_match or ())


def byte_range(request: web.Request, size: int, etag: str) -> tuple[int, int]:
    """(offset, count) to send: the one range asked for (206), or the whole file (no Range, several ranges, a
    malformed header, a stale If-Range); 416 when the range starts past the end."""
    value = request.headers.get("Range")
    if value is None:
        return 0, size
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range.strip() != f'"{etag}"':
        return 0, size
    m = _SINGLE_RANGE_RE.fullmatch(value.strip())
    if m is None or not (m[1] or m[2]):
        return 0, size
    if m[1]:
        start = int(m[1])
        if start >= size:
            raise RangeNotSatisfiable(
                f"range starts past the end ({size} bytes)", headers={"Content-Range": f"bytes */{size}"}
            )
        if not m[2]:
            return start, size - start
        end = int(m[2])
        return (0, size) if end < start else (start, min(end + 1, size) - start)
    suffix = int(m[2])
    if suffix == 0:
        raise RangeNotSatisfiable("empty suffix range", headers={"Content-Range": f"bytes */{size}"})
    start = max(0, size - suffix)
    return start, size - start


def respond(request: web.Request, held: OpenFile, vary: bool) -> web.StreamResponse:
    """The answer from ``held`` (the caller's reference passes to the response, or is released here)."""
    extra = {"Vary": "Accept"} if vary else {}
    if not_modified(request, held.etag):
        held.release()  # headers only
        headers = {k: v for k, v in held.headers.items() if k not in NOT_IN_304}
        return web.Response(status=304, headers={**headers, **extra})
    try:
        offset, count = byte_range(request, held.size, held.etag)
    except BaseException:
        held.release()
        raise
    return SendFile(held, offset=offset, count=count, headers=extra)


def hit(store: Store, image_id: str, name: str, meta: ObjectMeta) -> OpenFile | None:
    """The cached open file of ``name`` (acquired: pass it to ``respond``) if it is still good to send, else None."""
    files = store.open_files
    held = files.get((image_id, name))
    if held is None:
        return None
    try:
        st = held.fstat()
        good = st.st_nlink > 0 and st.st_size == held.size
        if good and name == ORIGINAL:
            good = not serve_check(st, meta, store.verified_stamp(image_id))  # True: changed since it was hashed
    except (OSError, OriginalMismatch):  # the miss path checks again, and reports a damaged copy
        good = False
    if not good:
        files.discard(held)
        held.release()
        return None
    return held


def keep(
    files: OpenFiles,
    epoch: int,
    key: tuple[str, str],
    fobj: io.BufferedReader,
    size: int,
    etag: str,
    headers: Mapping[str, str],
) -> OpenFile:
    """An ``OpenFile`` for what a miss opened (after reading ``files.epoch``), its headers made once; cached unless
    the image's files changed meanwhile. Returned acquired for the caller."""
    held = OpenFile(key, fobj, size, etag, {**headers, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"})
    held.block = header_block(held.headers.items())
    held.block_304 = header_block((k, v) for k, v in held.headers.items() if k not in NOT_IN_304)
    files.put(held, epoch)
    return held


def header_block(headers: Iterable[tuple[str, str]]) -> bytes:
    """Header lines as sent (latin-1, CRLF after each)."""
    return b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)
