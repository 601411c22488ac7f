"""Decoding untrusted images in throwaway worker processes, so a codec crash or runaway costs one job.

Why processes (and not threads or a ProcessPoolExecutor): libvips decoders are C; a segfault, an abort
or an endless loop in one of them would take a thread's whole process with it, and a
ProcessPoolExecutor breaks entirely when one worker dies and cannot stop one job that runs too long.
Here each worker is a small `python -m storage_node.sandbox_worker` process speaking one JSON line per job on
stdin/stdout, started with an address-space limit (RLIMIT_AS), no core dumps, one libvips thread and
a parent-death signal. A job that overruns its time limit gets its worker SIGKILLed; a worker that
dies mid-job is replaced; either way only that job fails (its image is rejected with the reason) and
the node carries on. Workers are started lazily and replaced after ``max_jobs`` jobs to bound leaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
from dataclasses import dataclass
from typing import Any

from common.errors import InvalidImage, UnsupportedImage
from common.procs import die_with_parent, python_module
from storage_node.objects.verify import OriginalMismatch


class SandboxFailure(InvalidImage):
    """The worker crashed, was killed for running too long, or ran out of memory on this input."""


@dataclass(eq=False)
class _Worker:
    proc: asyncio.subprocess.Process
    jobs: int = 0


class SandboxPool:
    def __init__(
        self, size: int, memory_mb: int, timeout_s: float, max_jobs: int = 500, vips_threads: int = 1, nice: int = 0
    ) -> None:
        """``nice``: the workers' CPU priority below the node's (an increment; 0: the same)."""
        self.size = size or os.cpu_count() or 2
        self.nice = nice
        self.memory_bytes = memory_mb * 1024 * 1024
        self.timeout_s = timeout_s
        self.max_jobs = max_jobs
        self.vips_threads = vips_threads
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._sem = asyncio.Semaphore(self.size)
        self.crashes = 0

    def _limits(self) -> None:
        """preexec_fn of every worker (runs in the child before exec)."""
        die_with_parent()
        resource.setrlimit(resource.RLIMIT_AS, (self.memory_bytes, self.memory_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if self.nice > 0:
            os.nice(self.nice)

    async def _spawn(self) -> _Worker:
        env = {**os.environ, "VIPS_CONCURRENCY": str(self.vips_threads), "MALLOC_ARENA_MAX": "2", "VIPS_WARNING": "0"}
        proc = await asyncio.create_subprocess_exec(
            *python_module("storage_node.sandbox_worker"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            preexec_fn=self._limits,
        )
        return _Worker(proc)

    async def run(self, job: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        """Run ``job`` in a worker; return its result, re-raise its InvalidImage/UnsupportedImage or
        OriginalMismatch, or raise SandboxFailure when the worker died or overran."""
        async with self._sem:
            worker = self._idle.pop() if self._idle else await self._spawn()
            self._busy.add(worker)
            try:
                answer = await self._exchange(worker, job, timeout_s or self.timeout_s)
            finally:
                self._busy.discard(worker)
            worker.jobs += 1
            if worker.jobs >= self.max_jobs:
                await _kill(worker)
            else:
                self._idle.append(worker)
        if answer["ok"]:
            return dict(answer["result"])
        if "mismatch" in answer:
            raise OriginalMismatch(**answer["mismatch"])
        if answer["status"] == UnsupportedImage.status:
            raise UnsupportedImage(answer["message"])
        raise InvalidImage(answer["message"])

    async def _exchange(self, worker: _Worker, job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        proc = worker.proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(job).encode() + b"\n")
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), timeout_s)
        except TimeoutError:
            await _kill(worker)
            self.crashes += 1
            raise SandboxFailure(f"processing took longer than {timeout_s:g}s") from None
        except (BrokenPipeError, ConnectionResetError):
            line = b""
        if not line:
            returncode = await proc.wait()
            self.crashes += 1
            how = f"signal {signal.Signals(-returncode).name}" if returncode < 0 else f"exit {returncode}"
            raise SandboxFailure(f"the decoder crashed on this image ({how})")
        return dict(json.loads(line))

    async def close(self) -> None:
        for worker in [*self._idle, *self._busy]:
            await _kill(worker)
        self._idle.clear()


async def _kill(worker: _Worker) -> None:
    with contextlib.suppress(ProcessLookupError):
        worker.proc.kill()
    with contextlib.suppress(Exception):
        await worker.proc.wait()
