"""`minicdn bench`: load a running cluster through its public API and print throughput and latency.

Each figure sits beside a peer measured in the same run on the same server: the server's own
`/healthz` (an empty handler), so the ratio shows what the real work costs over aiohttp itself.
The images it uploads are deleted at the end (also after a failure) unless `--keep`.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from minicdn.client import ClusterRef, connector, get_json, put_bytes, remove_images, request_upload

TARGET_JPEG_BYTES = 100 * 1024


@dataclass
class Figures:
    count: int
    seconds: float
    latencies_s: list[float]

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


def _noise_jpeg(side: int, seed: int) -> bytes:
    import pyvips

    base = pyvips.Image.gaussnoise(side, side, mean=128, sigma=30, seed=seed).cast("uchar")
    return bytes(base.bandjoin([base.rot90(), base.rot180()]).copy(interpretation="srgb").jpegsave_buffer(Q=85))


def make_jpegs(n: int) -> list[bytes]:
    """n distinct ~100 KB JPEGs (noise compresses badly, so the size follows the pixel count)."""
    side = 320
    side = int(side * (TARGET_JPEG_BYTES / len(_noise_jpeg(side, 0))) ** 0.5)
    return [_noise_jpeg(side, seed) for seed in range(n)]


async def run_load(
    n: int, concurrency: int, one: Callable[[int], Awaitable[object]], progress: Progress | None = None, label: str = ""
) -> Figures:
    latencies: list[float] = []
    counter = iter(range(n))
    task = progress.add_task(label, total=n) if progress else None

    async def worker() -> None:
        for i in counter:
            started = time.perf_counter()
            await one(i)
            latencies.append(time.perf_counter() - started)
            if progress is not None and task is not None:
                progress.advance(task)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Figures(n, time.perf_counter() - started, latencies)


async def upload_one(
    session: aiohttp.ClientSession, cluster: ClusterRef, body: bytes, uploaded: list[str], **fields: Any
) -> str:
    """Ticket + PUT of one body, the upload every upload figure times; the id joins ``uploaded`` as soon as
    the ticket is issued, so the bench deletes the image at the end even if the PUT fails."""
    ticket = await request_upload(session, cluster, size=len(body), **fields)
    uploaded.append(ticket["image_id"])
    await put_bytes(session, ticket["upload_url"], body, len(body))
    return str(ticket["image_id"])


async def _get_ok(session: aiohttp.ClientSession, url: str, **kw: Any) -> None:
    async with session.get(url, **kw) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: {resp.status}")


def _lag_s(body: dict[str, Any]) -> float | None:
    """201 -> last replica `ok`, from the server's own timestamps (no polling error in the figure)."""
    replicas = body["replicas"]
    if not replicas or any(r["state"] != "ok" or not r.get("verified_at") for r in replicas):
        return None
    last = max(datetime.fromisoformat(r["verified_at"]) for r in replicas)
    return (last - datetime.fromisoformat(body["uploaded_at"])).total_seconds()


async def replication_lags(
    session: aiohttp.ClientSession, cluster: ClusterRef, image_ids: list[str], timeout_s: float = 120
) -> list[float]:
    """Wait until every region holds each image; return each image's replication lag."""
    lags: dict[str, float] = {}
    sem = asyncio.Semaphore(8)
    deadline = time.perf_counter() + timeout_s

    async def check(image_id: str) -> None:
        async with sem:
            lag = _lag_s(await get_json(session, cluster, f"/v1/images/{image_id}"))
        if lag is not None:
            lags[image_id] = lag

    while len(lags) < len(image_ids) and time.perf_counter() < deadline:
        await asyncio.gather(*(check(i) for i in image_ids if i not in lags))
        await asyncio.sleep(0.05)
    if len(lags) < len(image_ids):
        raise RuntimeError(f"{len(image_ids) - len(lags)} image(s) not replicated after {timeout_s}s")
    return list(lags.values())


@dataclass
class BenchRun:
    figures: dict[str, Figures] = field(default_factory=dict)
    mean_bytes: float = 0.0
    uploaded: list[str] = field(default_factory=list)  # every image id a ticket was issued for
    removed: int = 0  # of those, deleted at the end (0 with keep)

    def as_json(self, concurrency: int) -> dict[str, Any]:
        """The `minicdn bench --json` document (docs/operations.md)."""
        return {
            "concurrency": concurrency,
            "mean_jpeg_bytes": round(self.mean_bytes),
            "figures": {
                name: {
                    "count": f.count,
                    "rate_per_s": round(f.rate, 2),
                    # None, not NaN (which is no JSON), when a figure had nothing to time.
                    "p50_ms": round(f.pct(50) * 1000, 3) if f.latencies_s else None,
                    "p99_ms": round(f.pct(99) * 1000, 3) if f.latencies_s else None,
                }
                for name, f in self.figures.items()
            },
            "uploaded": len(self.uploaded),
            "removed": self.removed,
        }


async def run_bench(
    cluster: ClusterRef,
    *,
    uploads: int,
    concurrency: int,
    lookups: int,
    gets: int,
    console: Console,
    idle_uploads: int = 20,
    keep: bool = False,
) -> BenchRun:
    run = BenchRun()
    async with aiohttp.ClientSession(connector=connector(concurrency * 2)) as session:
        try:
            await _load(session, cluster, run, uploads, concurrency, lookups, gets, console, idle_uploads)
        finally:
            if not keep and run.uploaded:
                console.print(f"deleting the {len(run.uploaded)} image(s) this bench uploaded (--keep keeps them)...")
                run.removed = await remove_images(session, cluster, run.uploaded)
    _print(run.figures, concurrency, run.mean_bytes, console)
    return run


async def _load(
    session: aiohttp.ClientSession,
    cluster: ClusterRef,
    run: BenchRun,
    uploads: int,
    concurrency: int,
    lookups: int,
    gets: int,
    console: Console,
    idle_uploads: int,
) -> None:
    results = run.figures
    console.print(f"making {uploads + idle_uploads} distinct ~100 KB JPEGs...")
    bodies = await asyncio.to_thread(make_jpegs, uploads + idle_uploads)
    run.mean_bytes = statistics.mean(len(b) for b in bodies)
    image_ids: list[str] = []
    with Progress(console=console, transient=True) as progress:

        async def upload(i: int) -> None:
            image_ids.append(await upload_one(session, cluster, bodies[i], run.uploaded))

        results["uploads"] = await run_load(uploads, concurrency, upload, progress, "uploads")
        loaded_lags = await replication_lags(session, cluster, image_ids)
        results["replication_loaded"] = Figures(len(loaded_lags), 1, loaded_lags)

        idle_lags: list[float] = []
        for i in range(uploads, uploads + idle_uploads):  # one at a time: the lag without a queue in front
            idle_lags += await replication_lags(
                session, cluster, [await upload_one(session, cluster, bodies[i], run.uploaded)]
            )
        results["replication_idle"] = Figures(len(idle_lags), 1, idle_lags)

        from minicdn.bench.pipeline import wait_ready

        await wait_ready(session, cluster, image_ids)  # URLs are handed out for processed images only
        rng = random.Random(1)
        results["lookups"] = await run_load(
            lookups,
            concurrency,
            lambda i: get_json(session, cluster, f"/v1/images/{rng.choice(image_ids)}/url", {"w": 600}),
            progress,
            "URL lookups",
        )
        results["query_peer"] = await run_load(
            lookups,
            concurrency,
            lambda i: _get_ok(session, f"{cluster.query_url}/healthz"),
            progress,
            "query /healthz",
        )

        variant_urls = [
            (await get_json(session, cluster, f"/v1/images/{image_id}/url", {"w": 600}))["url"]
            for image_id in image_ids[:20]
        ]
        for url in variant_urls:  # build once; the timed GETs read stored variants
            await _get_ok(session, url)
        results["node_gets"] = await run_load(
            gets,
            concurrency,
            lambda i: _get_ok(session, variant_urls[i % len(variant_urls)]),
            progress,
            "node GETs",
        )
        node_base = variant_urls[0].split("/i/")[0]
        results["node_peer"] = await run_load(
            gets, concurrency, lambda i: _get_ok(session, f"{node_base}/healthz"), progress, "node /healthz"
        )


def _print(r: dict[str, Figures], concurrency: int, mean_bytes: float, console: Console) -> None:
    table = Table(title=f"minicdn bench (concurrency {concurrency}, JPEGs of {mean_bytes / 1024:.0f} KB)")
    for col in ("figure", "rate", "p50", "p99", "vs peer"):
        table.add_column(col)

    def ms(x: float) -> str:
        return f"{x * 1000:.1f} ms"

    up = r["uploads"]
    table.add_row("uploads (POST /v1/uploads + PUT)", f"{up.rate:.0f}/s", ms(up.pct(50)), ms(up.pct(99)), "")
    for key, label in (
        ("replication_loaded", "201 -> every region ok (under upload load)"),
        ("replication_idle", "201 -> every region ok (one at a time)"),
    ):
        rep = r[key]
        table.add_row(label, f"{rep.count} images", ms(rep.pct(50)), ms(rep.pct(99)), "")
    for key, peer, label in (
        ("lookups", "query_peer", "URL lookups (GET /v1/images/{id}/url)"),
        ("node_gets", "node_peer", "node GETs of a stored variant"),
    ):
        f, p = r[key], r[peer]
        table.add_row(
            label,
            f"{f.rate:.0f}/s",
            ms(f.pct(50)),
            ms(f.pct(99)),
            f"{f.rate / p.rate:.2f}x of /healthz ({p.rate:.0f}/s)" if p.rate else "",
        )
    console.print(table)
