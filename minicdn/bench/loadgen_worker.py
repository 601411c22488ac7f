"""One process of the Python load generator (`python -m minicdn.bench.loadgen_worker`, its JSON spec as the first
line on stdin: url, headers, connections, duration_s).

It opens its connections (one GET each), prints ``ready``, waits for ``go`` on stdin, then keeps every
connection busy with GETs of one URL for ``duration_s``, and prints one JSON line: requests, failed,
seconds and a latency histogram in 10 µs buckets (``loadgen.merge`` adds the processes up). Like wrk it
follows no redirect, and counts an answer other than 2xx/3xx, a timeout or a broken connection as failed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

import aiohttp

BUCKET_S = 1e-5  # 10 µs


async def run(url: str, headers: dict[str, str], connections: int, duration_s: float) -> dict[str, Any]:
    hist: Counter[int] = Counter()
    counts = {"requests": 0, "failed": 0}
    timeout = aiohttp.ClientTimeout(total=5)
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=headers, auto_decompress=False
    ) as session:

        async def one() -> None:
            started = time.perf_counter()
            try:
                async with session.get(url, allow_redirects=False) as resp:
                    await resp.read()
                    ok = resp.status < 400
            except (aiohttp.ClientError, TimeoutError):
                counts["failed"] += 1
                return
            counts["requests"] += 1
            counts["failed"] += not ok
            hist[int((time.perf_counter() - started) / BUCKET_S)] += 1

        await asyncio.gather(*(one() for _ in range(connections)))  # connect, and a first answer on each
        hist.clear()
        counts.update(requests=0, failed=0)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)

        started = time.perf_counter()
        deadline = started + duration_s

        async def loop() -> None:
            while time.perf_counter() < deadline:
                await one()

        await asyncio.gather(*(loop() for _ in range(connections)))
        seconds = time.perf_counter() - started
    return {**counts, "seconds": seconds, "hist": {str(k): v for k, v in hist.items()}}


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    report = asyncio.run(run(spec["url"], spec["headers"], int(spec["connections"]), float(spec["duration_s"])))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
