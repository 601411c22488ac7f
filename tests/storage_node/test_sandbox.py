"""The sandbox: a crashed or overrunning worker costs one job, the limits are really applied."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from common.errors import InvalidImage, UnsupportedImage
from storage_node.sandbox import SandboxFailure, SandboxPool


def job(path: Path, **kw: Any) -> dict[str, Any]:
    return {"path": str(path), "max_pixels": 100_000_000, "max_frames": 500, "keep_gps": False, "eager": [], **kw}


async def test_results_rejections_crashes_and_timeouts(testdata: Path, tmp_path: Path) -> None:
    pool = SandboxPool(1, 1536, 20)
    try:
        thumb = tmp_path / "thumb.webp"
        result = await pool.run(job(testdata / "astronaut_rot8_gps.jpg", eager=[["thumb.webp", str(thumb)]]))
        assert (result["width"], result["height"], result["format"]) == (2048, 1536, "jpeg")
        assert result["exif"]["had_gps"] is True and "gps" not in result["exif"]
        assert thumb.read_bytes()[8:12] == b"WEBP"
        worker_pid = pool._idle[0].proc.pid
        limits = await asyncio.to_thread(Path(f"/proc/{worker_pid}/limits").read_text)
        assert f"{1536 * 1024 * 1024}" in next(line for line in limits.splitlines() if "address space" in line)

        text = tmp_path / "text.jpg"
        text.write_bytes(b"hello")
        with pytest.raises(UnsupportedImage):
            await pool.run(job(text))

        # A worker that dies mid-job (as a crashing codec would): that job fails, the next one works.
        busy = asyncio.ensure_future(
            pool.run(
                job(
                    testdata / "astronaut_rot8_gps.jpg",
                    eager=[[f"w{w}.avif", str(tmp_path / f"{w}.avif")] for w in (1200, 1300, 1400)],
                )
            )
        )
        await asyncio.sleep(0.3)
        os.kill(pool._busy.copy().pop().proc.pid, signal.SIGSEGV)
        with pytest.raises(SandboxFailure, match="crashed"):
            await busy
        assert (await pool.run(job(testdata / "coins_gray.png")))["format"] == "png"

        # A job over its time limit is killed; the pool carries on.
        with pytest.raises(SandboxFailure, match="longer than"):
            await pool.run(
                job(testdata / "astronaut_rot8_gps.jpg", eager=[["w2000.avif", str(tmp_path / "x")]]), timeout_s=0.05
            )
        assert pool.crashes == 2
        assert (await pool.run(job(testdata / "retina.webp")))["format"] == "webp"
    finally:
        await pool.close()


async def test_memory_limit_turns_a_big_decode_into_a_rejection(testdata: Path, tmp_path: Path) -> None:
    """An interlaced PNG cannot be streamed: 12000x8000 RGB (96 MP, under the pixel limit) needs a 288 MB
    buffer. A worker limited to 250 MB refuses it, and only that job fails."""
    import pyvips

    big = tmp_path / "big.png"
    pyvips.Image.black(12000, 8000, bands=3).pngsave(str(big), compression=1, interlace=True)
    pool = SandboxPool(1, 250, 60)
    try:
        with pytest.raises(InvalidImage, match="memory"):
            await pool.run(job(big))
        assert (await pool.run(job(testdata / "coins_gray.png")))["format"] == "png"
    finally:
        await pool.close()
