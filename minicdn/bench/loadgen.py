"""Timed HTTP GET loads, the same for every server of a `minicdn bench --peers` row: wrk when it is installed,
else a load generator of our own (aiohttp clients in several processes, `loadgen_worker`).

Both keep ``connections`` keep-alive connections busy over ``threads`` threads or processes for
``duration_s`` and report requests, seconds, failures and the p50/p99 latency. The Python one costs far
more CPU per request than wrk, so on a small machine it takes cores from the servers it measures: the
bench prints which one ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

# wrk's `done` hook prints one JSON line: its own text output rounds latencies and rates.
_WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "duration_us": %d, "failed": %d, "p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    failed: int  # connection errors, timeouts and answers other than 2xx/3xx
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Loader:
    """``tool`` is "wrk" or "python"; ``threads`` are wrk threads or Python processes."""

    tool: str
    duration_s: float
    connections: int
    threads: int
    why: str = ""  # why the Python one ran

    @property
    def description(self) -> str:
        flags = f"-t{self.threads} -c{self.connections} -d{self.duration_s:g}s"
        if self.tool == "wrk":
            return f"wrk {flags}"
        return f"Python load generator (aiohttp, {self.threads} processes; like wrk {flags}; {self.why})"

    async def get(self, url: str, headers: dict[str, str] | None = None) -> LoadResult:
        """Load ``url`` with GETs for the duration; raises when every request failed."""
        run = self._wrk if self.tool == "wrk" else self._python
        result = await run(url, headers or {})
        if result.requests == 0 or result.failed > result.requests // 100:
            raise RuntimeError(f"{self.tool} on {url}: {result.failed} of {result.requests} requests failed")
        return result

    async def _wrk(self, url: str, headers: dict[str, str]) -> LoadResult:
        with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="minicdn-bench-") as script:  # mode 0600
            # Headers go in the script, not on the command line, where `ps` would show the API key to anyone.
            for name, value in headers.items():
                script.write(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}\n")
            script.write(_WRK_SCRIPT)
            script.flush()
            argv = ["wrk", f"-t{self.threads}", f"-c{self.connections}", f"-d{self.duration_s:g}s", "--timeout", "5s"]
            proc = await asyncio.create_subprocess_exec(
                *argv, "-s", script.name, url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            out, err = await proc.communicate()
        line = next((ln for ln in out.decode().splitlines() if ln.startswith("{")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {err.decode().strip() or out.decode().strip()}")
        doc = json.loads(line)
        return LoadResult(
            doc["requests"], doc["duration_us"] / 1e6, doc["failed"], doc["p50_us"] / 1000, doc["p99_us"] / 1000
        )

    async def _python(self, url: str, headers: dict[str, str]) -> LoadResult:
        # pick() keeps threads <= connections: every process gets one connection or more.
        shares = [self.connections // self.threads + (i < self.connections % self.threads) for i in range(self.threads)]
        spec = {"url": url, "headers": headers, "duration_s": self.duration_s}
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",  # the current directory off sys.path: a file there cannot shadow a module
                "-m",
                "minicdn.bench.loadgen_worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            for _ in shares
        ]
        try:
            for proc, n in zip(procs, shares, strict=True):
                assert proc.stdin is not None
                # On stdin, not the command line, where `ps` would show the API key to anyone.
                proc.stdin.write(json.dumps({**spec, "connections": n}).encode() + b"\n")
                await proc.stdin.drain()
            # Every worker has imported aiohttp and opened its connections before any starts timing.
            for proc in procs:
                assert proc.stdout is not None
                if (await proc.stdout.readline()).strip() != b"ready":
                    raise RuntimeError("a load generator process did not start")
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
            docs = [json.loads((await p.communicate())[0]) for p in procs]
        finally:
            for proc in procs:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        return merge(docs)


def merge(docs: list[dict[str, Any]]) -> LoadResult:
    """One result from the workers' counts and latency histograms (10 µs buckets, so percentiles merge)."""
    hist: dict[int, int] = {}
    for doc in docs:
        for bucket, n in doc["hist"].items():
            hist[int(bucket)] = hist.get(int(bucket), 0) + int(n)
    total = sum(hist.values())

    def pct(p: float) -> float:
        rank, seen = max(1, round(p / 100 * total)), 0
        for bucket in sorted(hist):
            seen += hist[bucket]
            if seen >= rank:
                return (bucket + 1) * 0.01  # the bucket's upper edge, in ms
        return 0.0

    return LoadResult(
        requests=sum(int(d["requests"]) for d in docs),
        seconds=max(float(d["seconds"]) for d in docs),
        failed=sum(int(d["failed"]) for d in docs),
        p50_ms=pct(50),
        p99_ms=pct(99),
    )


def pick(tool: str, duration_s: float, connections: int, threads: int) -> Loader:
    """``tool``: "auto" (wrk when on PATH, else python), "wrk" or "python"."""
    installed = shutil.which("wrk") is not None
    if tool == "wrk" and not installed:
        raise ValueError("--loader wrk: wrk is not installed (Debian: apt-get install wrk)")
    why = "--loader python" if tool == "python" else "wrk is not installed"
    tool = "wrk" if tool == "wrk" or (tool == "auto" and installed) else "python"
    return Loader(tool, duration_s, connections, max(1, min(threads, connections)), why)
