"""Stream a request body to a temp file with a size cap and a running SHA-256; nothing is held in memory."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from common.errors import PayloadTooLarge

WRITE_BATCH_BYTES = 1024 * 1024  # write to disk in ~1 MB batches: one thread hop per MB, not per chunk


@dataclass(frozen=True)
class Ingested:
    path: Path
    size: int
    sha256: str
    head: bytes  # first bytes, for the magic-byte check


async def ingest(chunks: AsyncIterator[bytes], dest: Path, max_bytes: int) -> Ingested:
    """Write ``chunks`` to ``dest``; raise PayloadTooLarge as soon as more than ``max_bytes`` arrive.

    The file is opened by the first batch's write and closed by the last's: a body under one batch (most
    photos) costs one thread hop. The caller removes ``dest`` on any error.
    """
    digest = hashlib.sha256()
    size = 0
    head = b""
    pending: list[bytes] = []
    pending_size = 0
    out: list[io.BufferedWriter] = []  # the open file, once a batch was written

    def write(batch: list[bytes], last: bool) -> None:
        if not out:
            out.append(open(dest, "wb"))  # closed by the last batch, or below on an error
        out[0].writelines(batch)
        if last:
            out.pop().close()

    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"upload is larger than {max_bytes} bytes")
            digest.update(chunk)
            if len(head) < 64:
                head += chunk[: 64 - len(head)]
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= WRITE_BATCH_BYTES:
                await asyncio.to_thread(write, pending, False)
                pending, pending_size = [], 0
        await asyncio.to_thread(write, pending, True)
    finally:
        if out:
            await asyncio.to_thread(out.pop().close)
    return Ingested(dest, size, digest.hexdigest(), head)
