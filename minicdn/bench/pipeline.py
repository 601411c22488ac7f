"""`minicdn bench --pipeline`: image-pipeline figures of a running cluster, each beside a peer measured in the
same run on this machine.

- fresh 1200 px WebP builds/s from 12 MP JPEGs through a node (requests in parallel so every render
  thread is busy), against the same operation as a plain pyvips loop on two threads (the limit) and
  against thumbor (PIL engine, 2 processes, no result storage) started here on loopback;
- requests/s for a stored variant, against thumbor's fresh rate;
- the first-request latency of a lazy variant, and the AVIF build time at the default settings;
- peak RSS of the node (and of its sandboxed workers) while a 100-megapixel upload is processed and
  variants of it are built.

The node must run on this machine (its RSS is read with psutil from the process listening on its port).
The images it uploads are deleted at the end (also after a failure) unless `keep`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import psutil
from rich.console import Console
from rich.table import Table

from minicdn.client import ClusterRef, connector, get_json, put_bytes, remove_images, request_upload

WEBP_QUALITY = 80  # the node's default (pipeline.webp_quality), used by every peer too


@dataclass
class PipelineFigures:
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (figure, value, vs peer)
    values: dict[str, float] = field(default_factory=dict)
    uploaded: list[str] = field(default_factory=list)  # every image id a ticket was issued for
    removed: int = 0  # of those, deleted at the end (0 with keep)

    def add(self, key: str, label: str, value: float, unit: str, peer: str = "") -> None:
        self.values[key] = value
        self.rows.append((label, f"{value:,.2f} {unit}" if value < 100 else f"{value:,.0f} {unit}", peer))


# --- inputs ---------------------------------------------------------------------------------------------
def _photo(width: int, height: int, seed: int) -> Any:
    """A photo-like picture (smooth Perlin colour fields plus grain): compresses and decodes like a photo."""
    import pyvips

    bands = [
        pyvips.Image.perlin(width, height, cell_size=max(64, width // 24), uchar=True, seed=seed + i) for i in range(3)
    ]
    grain = pyvips.Image.gaussnoise(width, height, sigma=12, seed=seed).cast("char")
    return (bands[0].bandjoin(bands[1:]).copy(interpretation="srgb") + grain).cast("uchar")


def make_photos(n: int, width: int, height: int) -> list[bytes]:
    """n distinct JPEGs of one picture (a different mark on each, so dedupe does not merge them)."""
    base = _photo(width, height, 7).copy_memory()
    out = []
    for i in range(n):
        marked = base.draw_rect([255 - i, i, 128], 40 + 37 * i, 40, 32, 32, fill=True)
        out.append(bytes(marked.jpegsave_buffer(Q=85)))
    return out


# --- cluster helpers ------------------------------------------------------------------------------------
async def upload_all(
    session: aiohttp.ClientSession, cluster: ClusterRef, bodies: list[bytes], uploaded: list[str]
) -> list[str]:
    """Upload each body; every ticket's id also goes to ``uploaded`` at once, so a failure leaves nothing behind."""
    ids = []
    for body in bodies:
        ticket = await request_upload(session, cluster, size=len(body))
        uploaded.append(ticket["image_id"])
        await put_bytes(session, ticket["upload_url"], body, len(body))
        ids.append(ticket["image_id"])
    return ids


async def wait_ready(
    session: aiohttp.ClientSession, cluster: ClusterRef, image_ids: list[str], timeout_s: float = 300
) -> None:
    """Until every image is processed and on every replica (so the timed part has the machine to itself)."""
    deadline = time.perf_counter() + timeout_s
    waiting = set(image_ids)
    while waiting:
        for image_id in list(waiting):
            body = await get_json(session, cluster, f"/v1/images/{image_id}")
            if body["status"] == "rejected":
                raise RuntimeError(f"{image_id} was rejected: {body['reason']}")
            if body["status"] == "ready" and body["replicas"] and all(r["state"] == "ok" for r in body["replicas"]):
                waiting.discard(image_id)
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{len(waiting)} image(s) not ready after {timeout_s}s")
        await asyncio.sleep(0.1)


async def variant_url(session: aiohttp.ClientSession, cluster: ClusterRef, image_id: str, variant: str) -> str:
    found = await get_json(session, cluster, f"/v1/images/{image_id}/url", {"w": 600})
    return str(found["url"]).rsplit("/", 1)[0] + "/" + variant


async def fetch(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as resp:
        data = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: {resp.status} {data[:200]!r}")
        return len(data)


async def timed_parallel(items: list[Any], concurrency: int, one: Callable[[Any], Awaitable[Any]]) -> float:
    """Seconds to run ``one`` over ``items`` with ``concurrency`` in flight."""
    queue = iter(items)

    async def worker() -> None:
        for item in queue:
            await one(item)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


def node_process(base_url: str) -> psutil.Process:
    port = urlsplit(base_url).port
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    raise RuntimeError(f"no local process listens on port {port}: run the bench on the cluster's machine")


class RssSampler:
    """Peak RSS of a process, and separately of its child processes (the sandbox workers), every 10 ms."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        self.start_node = proc.memory_info().rss
        self.peak_node = self.start_node
        self.peak_worker = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                self.peak_node = max(self.peak_node, self.proc.memory_info().rss)
                for child in self.proc.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        if "storage_node.sandbox" in " ".join(child.cmdline()):
                            self.peak_worker = max(self.peak_worker, child.memory_info().rss)
            await asyncio.sleep(0.01)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


# --- peers ----------------------------------------------------------------------------------------------
def pyvips_loop(paths: list[Path], out_dir: Path, threads: int = 2) -> float:
    """The limit: the same thumbnail + WebP save in a plain two-thread loop; returns seconds."""
    import pyvips

    def one(path: Path) -> None:
        image = pyvips.Image.thumbnail(str(path), 1200, height=10_000_000, size="down")
        image.webpsave(str(out_dir / (path.stem + ".webp")), Q=WEBP_QUALITY, effort=4, keep="none")

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, paths))
    return time.perf_counter() - started


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def thumbor_server(root: Path, processes: int = 2) -> Iterator[str | None]:
    """thumbor on loopback (PIL engine, file loader on ``root``, no storage, no result storage); yields its base
    URL, or None when the `thumbor` package is not installed (`pip install -e '.[bench]'`)."""
    exe = shutil.which("thumbor", path=str(Path(sys.executable).parent)) or shutil.which("thumbor")
    if exe is None:
        yield None
        return
    conf = root / "thumbor.conf"
    conf.write_text(
        "LOADER = 'thumbor.loaders.file_loader'\n"
        f"FILE_LOADER_ROOT_PATH = {str(root)!r}\n"
        "STORAGE = 'thumbor.storages.no_storage'\n"
        "RESULT_STORAGE = None\n"
        "ENGINE = 'thumbor.engines.pil'\n"
        "ALLOW_UNSAFE_URL = True\n"
        f"QUALITY = {WEBP_QUALITY}\n"
        "RESPECT_ORIENTATION = True\n"
    )
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "-p", str(port), "-i", "127.0.0.1", "-c", str(conf), "--processes", str(processes), "-l", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


async def _wait_http(session: aiohttp.ClientSession, url: str, timeout_s: float = 30) -> None:
    deadline = time.perf_counter() + timeout_s
    while True:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{url} did not come up")
        await asyncio.sleep(0.2)


# --- the run --------------------------------------------------------------------------------------------
async def run_pipeline_bench(
    cluster: ClusterRef,
    *,
    images: int,
    stored_gets: int,
    console: Console,
    with_100mp: bool = True,
    photo_size: tuple[int, int] = (4000, 3000),
    big_size: tuple[int, int] = (10000, 10000),
    keep: bool = False,
) -> PipelineFigures:
    """``photo_size``/``big_size`` are the 12 MP and 100 MP inputs (smaller only for the bench's own test)."""
    fig = PipelineFigures()
    work = Path(tempfile.mkdtemp(prefix="minicdn-bench-"))
    try:
        async with aiohttp.ClientSession(connector=connector(64)) as session:
            try:
                await _run(session, cluster, fig, work, images, stored_gets, console, photo_size)
                if with_100mp:
                    await _hundred_megapixels(session, cluster, fig, console, big_size)
            finally:
                if not keep and fig.uploaded:
                    console.print(
                        f"deleting the {len(fig.uploaded)} image(s) this bench uploaded (--keep keeps them)..."
                    )
                    fig.removed = await remove_images(session, cluster, fig.uploaded)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    table = Table(title=f"minicdn bench --pipeline ({os.cpu_count()} cores; load average at the end {load})")
    for col in ("figure", "value", "vs peer (same run)"):
        table.add_column(col)
    for row in fig.rows:
        table.add_row(*row)
    console.print(table)
    return fig


async def _run(
    session: aiohttp.ClientSession,
    cluster: ClusterRef,
    fig: PipelineFigures,
    work: Path,
    n: int,
    stored_gets: int,
    console: Console,
    photo_size: tuple[int, int],
) -> None:
    console.print(f"making {n + 4} distinct {photo_size[0]}x{photo_size[1]} JPEGs and uploading them...")
    bodies = await asyncio.to_thread(make_photos, n + 4, *photo_size)
    src = work / "src"
    src.mkdir()
    paths = []
    for i, body in enumerate(bodies[:n]):
        paths.append(src / f"img{i}.jpg")
        paths[-1].write_bytes(body)
    ids = await upload_all(session, cluster, bodies, fig.uploaded)
    await wait_ready(session, cluster, ids)
    build_ids, lazy_ids = ids[:n], ids[n:]

    # Two rounds, interleaved, best of each contender: the machine is shared, so a burst of someone
    # else's load during one contender's turn should not decide the ratio.
    out = work / "out"
    out.mkdir()
    loop_rates, node_rates, thumbor_rates = [], [], []
    urls: list[str] = []
    with thumbor_server(src) as base:
        if base is None:
            console.print("[yellow]thumbor is not installed (pip install -e '.[bench]'): no thumbor figures")
        else:
            await _wait_http(session, f"{base}/healthcheck")
            for warm in paths[:2]:  # one request per thumbor process before timing
                await fetch(session, f"{base}/unsafe/1200x0/filters:format(webp)/{warm.name}")
        # fit1200x1200 of a landscape 4000x3000 is the same 1200 px wide WebP, under a fresh name.
        for variant in ("w1200.webp", "fit1200x1200.webp"):
            # 1. The limit: a plain two-thread pyvips loop over the same files.
            loop_rates.append(n / await asyncio.to_thread(pyvips_loop, paths, out))
            # 2. Through the node: a fresh build per image, 4 requests in flight (both render threads busy).
            round_urls = [await variant_url(session, cluster, i, variant) for i in build_ids]
            node_rates.append(n / await timed_parallel(round_urls, 4, lambda u: fetch(session, u)))
            urls = urls or round_urls
            # 3. thumbor: the same operation on the same files (no result storage: every request builds).
            if base is not None:
                t_urls = [f"{base}/unsafe/1200x0/filters:format(webp)/{p.name}" for p in paths]
                thumbor_rates.append(n / await timed_parallel(t_urls, 4, lambda u: fetch(session, u)))
    loop_rate, node_rate = max(loop_rates), max(node_rates)
    thumbor_rate = max(thumbor_rates) if thumbor_rates else None
    vs = f"{node_rate / loop_rate:.2f}x of a pyvips loop on 2 threads ({loop_rate:.2f}/s)"
    if thumbor_rate:
        vs += f"; {node_rate / thumbor_rate:.2f}x of thumbor ({thumbor_rate:.2f}/s)"
    fig.add("fresh_webp_per_s", "fresh 1200 px WebP builds from 12 MP JPEGs, through a node", node_rate, "/s", vs)
    fig.values["pyvips_loop_per_s"] = loop_rate
    if thumbor_rate:
        fig.values["thumbor_per_s"] = thumbor_rate

    # 4. Stored variant, repeated.
    stored = urls[0]
    stored_s = await timed_parallel(list(range(stored_gets)), 32, lambda _i: fetch(session, stored))
    stored_rate = stored_gets / stored_s
    fig.add(
        "stored_per_s",
        "GETs of a stored variant (1200 px WebP, concurrency 32)",
        stored_rate,
        "/s",
        f"{stored_rate / thumbor_rate:,.0f}x thumbor's fresh rate" if thumbor_rate else "",
    )

    # 5. First request of a lazy variant (one at a time), and AVIF at the default settings.
    lazy, avif = [], []
    for image_id in lazy_ids:
        url = await variant_url(session, cluster, image_id, "w600.jpg")
        started = time.perf_counter()
        await fetch(session, url)
        lazy.append(time.perf_counter() - started)
    for image_id in lazy_ids:
        url = await variant_url(session, cluster, image_id, "w1200.avif")
        started = time.perf_counter()
        await fetch(session, url)
        avif.append(time.perf_counter() - started)
    fig.add(
        "lazy_first_ms",
        "first request of a lazy variant (w600.jpg of 12 MP), median",
        1000 * statistics.median(lazy),
        "ms",
        f"max {1000 * max(lazy):.0f} ms over {len(lazy)}",
    )
    fig.add(
        "avif_ms",
        "AVIF build (w1200.avif of 12 MP, default quality/effort), median",
        1000 * statistics.median(avif),
        "ms",
        f"{statistics.median(avif) / statistics.median(lazy):.1f}x the JPEG time",
    )


async def _hundred_megapixels(
    session: aiohttp.ClientSession, cluster: ClusterRef, fig: PipelineFigures, console: Console, size: tuple[int, int]
) -> None:
    console.print(f"making a {size[0] * size[1] / 1e6:.0f}-megapixel JPEG ({size[0]} x {size[1]})...")
    body = (await asyncio.to_thread(make_photos, 1, *size))[0]
    node_base = (await get_json(session, cluster, "/v1/nodes"))["nodes"]
    ticket = await request_upload(session, cluster, size=len(body))
    fig.uploaded.append(ticket["image_id"])
    base = next(n["base_url"] for n in node_base if n["node_id"] == ticket["node_id"])
    sampler = RssSampler(node_process(base))
    with sampler:
        await put_bytes(session, ticket["upload_url"], body, len(body))
        await wait_ready(session, cluster, [ticket["image_id"]])
        for variant in ("w2400.webp", "w1200.avif", "600x600.jpg", "fit1200x1200.png", "w150.auto"):
            await fetch(session, f"{base.rstrip('/')}/i/{ticket['image_id']}/{variant}")
    label = (
        f"peak RSS of the node building variants of a {size[0] * size[1] / 1e6:.0f} MP upload "
        f"({len(body) / 1e6:.1f} MB)"
    )
    fig.add(
        "peak_rss_mb",
        label,
        sampler.peak_node / 2**20,
        "MB",
        f"{sampler.start_node / 2**20:.0f} MB before; its largest sandbox worker (processing and variant "
        f"builds run there): {sampler.peak_worker / 2**20:.0f} MB",
    )
    fig.values["peak_worker_rss_mb"] = sampler.peak_worker / 2**20
