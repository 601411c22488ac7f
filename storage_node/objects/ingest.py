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

    The caller removes ``dest`` on any error.
    """
    digest = hashlib.sha256()
    size = 0
    head = b""
    pending: list[bytes] = []
    pending_size = 0
    fobj: io.BufferedWriter = await asyncio.to_thread(open, dest, "wb")
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
                await asyncio.to_thread(fobj.writelines, pending)
                pending, pending_size = [], 0
        if pending:
            await asyncio.to_thread(fobj.writelines, pending)
        await asyncio.to_thread(fobj.flush)
    finally:
        await asyncio.to_thread(fobj.close)
    return Ingested(dest, size, digest.hexdigest(), head)
