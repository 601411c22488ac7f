"""`minicdn bench --peers`: minicdn beside the servers a user would pick instead, loaded the same way in one
run on this machine, each figure the median of ``runs`` runs (interleaved, the order flipped every run, so
a burst of someone else's load does not fall on one contender only).

Next to a running cluster it starts SeaweedFS (`seaweed`) and nginx (`nginx`) on loopback in a temp dir,
and stops them at the end. Rows:

1. GET a stored ~100 KB variant from a node, against a SeaweedFS volume GET of the same bytes and nginx
   (one worker) serving the same file;
2. the same GET through nginx (one worker) in front of the node, configured by ``minicdn nginx-config`` and
   sending the node's published tree, against that plain nginx (when the node keeps a published tree, as
   ``minicdn dev``'s do);
3. the URL lookup ``GET /v1/images/{id}/url`` (with the API key), against the SeaweedFS master's
   ``/dir/lookup?volumeId=`` and the query service's own near-empty ``/healthz``;
4. uploads: a ticket + PUT per file (`uploads.upload_one`) at ``concurrency``, against SeaweedFS's assign +
   PUT with replication 100, of the same files, and against the stack floor (``minicdn.bench.stack_floor``:
   minicdn's own parts with its durability and nothing else); minicdn's CPU is counted until every upload
   is `ready` on every replica (the work after the 201 is part of what an upload costs), and its budget (where that CPU
   and time go, stage by stage, and the libvips floor: ``minicdn.bench.budget``) follows the table.

``PeersOptions.rows`` (``--rows``) picks the rows.

Rows 1-3 run through `loadgen` (wrk, else our Python load generator); row 4 through this process, the
same client code for both. CPU seconds are read from every process of each server (`cpu`): the node and
the query service found by their ports, and for uploads every node, and Postgres and NATS when the state
dir holds `minicdn dev`'s configs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import shutil
import socket
import statistics
import struct
import tempfile
import time
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import psutil
from rich.console import Console

from minicdn.bench.budget import Counters, StageFigure, budget_json, floor_of, median_figures, per_upload, read_stages
from minicdn.bench.cpu import CpuWindow, Server
from minicdn.bench.loadgen import Loader, LoadResult
from minicdn.bench.nginx import Nginx, nginx_in_front, nginx_serving
from minicdn.bench.peers_report import Contender, Detail, Row, Sample, Target, as_json, print_table
from minicdn.bench.pipeline import make_photos, wait_ready
from minicdn.bench.seaweed import SeaweedFS, seaweedfs
from minicdn.bench.stack_floor import StackFloor, stack_floor
from minicdn.bench.uploads import make_jpegs, run_load, upload_one
from minicdn.client import ClusterRef, connector, get_json, remove_images

VARIANT_BYTES = 100 * 1024  # the variant row serves the variant nearest this size
CANDIDATES = [(600, "jpeg"), (600, "webp"), (1200, "jpeg"), (1200, "webp")]  # (w, fmt) looked up and built
RAW_NGINX = "nginx (1 worker)"
ROWS = frozenset({"gets", "front", "lookups", "uploads"})
DISTINCT_BASES = 64  # upload bodies are this many noise JPEGs, each made unique per file by a comment


@dataclass(frozen=True)
class PeersOptions:
    loader: Loader
    runs: int
    uploads: int  # files per upload run
    concurrency: int  # uploads in flight
    photo: Path | None  # the picture of the variant row (default: a photo-like JPEG made here)
    state_dir: Path  # `minicdn dev`'s, to find its Postgres and NATS
    keep: bool = False
    rows: frozenset[str] = ROWS  # which rows to measure


@dataclass
class PeersRun:
    rows: list[Row] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)  # every image id a ticket was issued for
    removed: int = 0  # of those, deleted at the end (0 with keep)

    def as_json(self, loader: str, runs: int) -> dict[str, Any]:
        return {**as_json(self.rows, loader, runs), "uploaded": len(self.uploaded), "removed": self.removed}


@dataclass
class Load:
    """One contender of a row: the servers whose CPU counts, and one timed run."""

    contender: Contender
    servers: list[Server]
    run: Callable[[int], Awaitable[LoadResult]]  # argument: the run's number


# --- inputs ---------------------------------------------------------------------------------------------
def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same JPEG with a COM segment after SOI: other bytes (no dedupe), same pixels, same decode cost."""
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def upload_bodies(bases: list[bytes], n: int, tag: str) -> list[bytes]:
    return [with_comment(bases[i % len(bases)], f"minicdn bench {tag} {i}") for i in range(n)]


async def stored_variant(
    session: aiohttp.ClientSession, cluster: ClusterRef, photo: bytes, uploaded: list[str]
) -> tuple[str, dict[str, str], str, bytes]:
    """Upload ``photo``, wait until it is ready everywhere, build the candidate variants through the node
    (which warms them) and keep the one nearest 100 KB: (image id, lookup query, node URL, its bytes)."""
    image_id = await upload_one(session, cluster, photo, uploaded)
    await wait_ready(session, cluster, [image_id])
    best: tuple[int, dict[str, str], str, bytes] | None = None
    for width, fmt in CANDIDATES:
        query = {"w": str(width), "fmt": fmt}
        url = str((await get_json(session, cluster, f"/v1/images/{image_id}/url", query))["url"])
        for _ in range(2):  # the first GET builds it, the second reads it stored
            async with session.get(url) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"GET {url}: {resp.status}")
        if best is None or abs(len(body) - VARIANT_BYTES) < best[0]:
            best = (abs(len(body) - VARIANT_BYTES), query, url, body)
    assert best is not None
    return image_id, best[1], best[2], best[3]


# --- servers --------------------------------------------------------------------------------------------
def _is_local(host: str) -> bool:
    with contextlib.suppress(OSError, ValueError):
        addr = ipaddress.ip_address(socket.gethostbyname(host))
        return addr.is_loopback or any(
            a.address == str(addr) for addrs in psutil.net_if_addrs().values() for a in addrs
        )
    return False


def _server(name: str, url: str) -> Server:
    """The processes listening on the URL's port, when its host is this machine."""
    parts = urlsplit(url)
    local = parts.hostname is not None and parts.port is not None and _is_local(parts.hostname)
    return Server.on_ports(name, [parts.port] if local and parts.port else [])


def node_config(state_dir: Path, node_url: str) -> Path | None:
    """The config file ``minicdn dev`` wrote for the node serving ``node_url`` (by its port), if any."""
    port = urlsplit(node_url).port
    for path in sorted((state_dir / "config").glob("*.toml")):
        with contextlib.suppress(OSError, tomllib.TOMLDecodeError):
            if tomllib.loads(path.read_text()).get("node", {}).get("port") == port:
                return path
    return None


def dev_infra(state_dir: Path) -> list[Server]:
    """Postgres and NATS of a `minicdn dev` cluster, from the configs it wrote in its state dir."""
    try:
        config = tomllib.loads((state_dir / "config" / "query.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return []
    found = [("postgres", config.get("database", {}).get("url", "")), ("nats", config.get("nats", {}).get("url", ""))]
    return [s for s in (_server(name, url) for name, url in found if url) if s.local]


async def minicdn_servers(session: aiohttp.ClientSession, cluster: ClusterRef, state_dir: Path) -> list[Server]:
    """The query service, every node (`GET /v1/nodes`, an admin key; else none) and the dev cluster's
    Postgres and NATS: all that works for an upload."""
    servers = [_server("query service", cluster.query_url)]
    with contextlib.suppress(Exception):
        nodes = (await get_json(session, cluster, "/v1/nodes"))["nodes"]
        servers += [_server(str(n["node_id"]), str(n["base_url"])) for n in nodes if n.get("base_url")]
    return servers + dev_infra(state_dir)


# --- rows -----------------------------------------------------------------------------------------------
def _get_row(
    loader: Loader, node_url: str, body: bytes, sw: SeaweedFS | None, sw_url: str, ng: Nginx | None
) -> tuple[Row, list[Load]]:
    row = Row("node_get", f"GET a stored {len(body) / 1024:.0f} KB variant", "req/s", Contender("minicdn node"))
    node = _server("minicdn node", node_url)
    loads = [Load(row.minicdn, [node], lambda _r: loader.get(node_url))]
    if not node.local:
        row.notes.append("the node is not on this machine (or not visible to this user): its CPU is not measured")
    if sw is None:
        row.notes.append("SeaweedFS is not installed (pip install -e '.[bench]'): no SeaweedFS figures")
    else:
        peer = Contender("SeaweedFS volume")
        row.peers.append(peer)
        row.targets[peer.name] = Target(1.5, "issue 11", p99_ms=25)
        name = sw.volume_of(sw_url)
        volume = Server(name, frozenset({sw.pids[name]}))
        loads.append(Load(peer, [volume], lambda _r: loader.get(sw_url)))
    if ng is None:
        row.notes.append("nginx is not installed (Debian: apt-get install nginx-light): no nginx figures")
    else:
        peer = Contender(RAW_NGINX)
        row.peers.append(peer)
        nginx_url = f"{ng.base_url}/{node_url.rsplit('/', 1)[1]}"
        loads.append(Load(peer, [Server("nginx", frozenset({ng.pid}))], lambda _r: loader.get(nginx_url)))
    return row, loads


def _front_row(
    loader: Loader, node_url: str, body: bytes, front: Nginx, raw: Contender | None
) -> tuple[Row, list[Load]]:
    """nginx in front of the node (``minicdn nginx-config``) sending the same variant, against nginx sending the
    file from a directory of its own (the contender of the GET row, measured there)."""
    title = f"GET the {len(body) / 1024:.0f} KB variant through nginx in front of the node"
    row = Row("nginx_front_get", title, "req/s", Contender("nginx in front of the node (1 worker)"))
    if raw is not None:
        row.peers.append(raw)
        row.targets[raw.name] = Target(0.9, "issue 11")
    url = f"{front.base_url}{urlsplit(node_url).path}"
    return row, [Load(row.minicdn, [Server("nginx in front", frozenset({front.pid}))], lambda _r: loader.get(url))]


def _lookup_row(
    loader: Loader, cluster: ClusterRef, lookup_url: str, sw: SeaweedFS | None, sw_url: str
) -> tuple[Row, list[Load]]:
    row = Row("url_lookup", "URL lookup GET /v1/images/{id}/url", "req/s", Contender("minicdn query service"))
    query = _server("query service", cluster.query_url)
    loads = [Load(row.minicdn, [query], lambda _r: loader.get(lookup_url, cluster.auth))]
    if sw is not None:
        peer = Contender("SeaweedFS master /dir/lookup")
        row.peers.append(peer)
        row.targets[peer.name] = Target(0.3, "issue 11")
        master = Server("master", frozenset({sw.pids["master"]}))
        loads.append(Load(peer, [master], lambda _r: loader.get(sw.lookup_url(sw_url))))
    # The query service's own ceiling: its near-empty /healthz through aiohttp, on the same processes.
    own = Contender("query service /healthz")
    row.peers.append(own)
    row.targets[own.name] = Target(0.8, "issue 11")
    loads.append(Load(own, [query], lambda _r: loader.get(f"{cluster.query_url}/healthz")))
    return row, loads


# --- the run --------------------------------------------------------------------------------------------
async def run_peers_bench(cluster: ClusterRef, opts: PeersOptions, console: Console) -> PeersRun:
    run = PeersRun()
    work = Path(tempfile.mkdtemp(prefix="minicdn-bench-peers-"))
    try:
        async with aiohttp.ClientSession(connector=connector(max(64, opts.concurrency * 2))) as session:
            try:
                await _run(session, cluster, opts, console, work, run)
            finally:
                if not opts.keep and run.uploaded:
                    console.print(
                        f"deleting the {len(run.uploaded)} image(s) this bench uploaded (--keep keeps them)..."
                    )
                    run.removed = await remove_images(session, cluster, run.uploaded)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(run.rows, opts.loader.description, opts.runs, console)
    return run


async def _run(
    session: aiohttp.ClientSession, cluster: ClusterRef, opts: PeersOptions, console: Console, work: Path, run: PeersRun
) -> None:
    console.print(f"load: {opts.loader.description}")
    photo = opts.photo.read_bytes() if opts.photo else (await asyncio.to_thread(make_photos, 1, 1800, 1200))[0]
    console.print("uploading the photo, waiting until it is ready everywhere, building its variants...")
    image_id, query, node_url, body = await stored_variant(session, cluster, photo, run.uploaded)
    lookup_url = f"{cluster.query_url}/v1/images/{image_id}/url?" + "&".join(f"{k}={v}" for k, v in query.items())
    console.print(f"making {min(opts.uploads, DISTINCT_BASES)} noise JPEGs for the upload row...")
    bases = await asyncio.to_thread(make_jpegs, min(opts.uploads, DISTINCT_BASES))
    everything = await minicdn_servers(session, cluster, opts.state_dir)
    name = node_url.rsplit("/", 1)[1]
    async with contextlib.AsyncExitStack() as stack:
        console.print("starting SeaweedFS (master + 2 volume servers, 2 data centres) and nginx...")
        sw = await stack.enter_async_context(seaweedfs(work / "seaweedfs", session))
        ng = await stack.enter_async_context(nginx_serving(work / "nginx", name, body, session))
        config = node_config(opts.state_dir, node_url)
        front = (
            await stack.enter_async_context(nginx_in_front(work / "front", config, urlsplit(node_url).path, session))
            if config is not None
            else f"no config of the node at {node_url} in {opts.state_dir}"
        )
        sw_url = await sw.write(session, body) if sw else ""
        get_row, get_loads = _get_row(opts.loader, node_url, body, sw, sw_url, ng)
        raw = next((p for p in get_row.peers if p.name == RAW_NGINX), None)
        front_rows: list[Row] = []
        front_loads: list[Load] = []
        if isinstance(front, str):
            get_row.notes.append(f"nginx in front of the node not measured: {front}")
        else:
            front_row, front_loads = _front_row(opts.loader, node_url, body, front, raw)
            front_rows.append(front_row)
        lookup_row, lookup_loads = _lookup_row(opts.loader, cluster, lookup_url, sw, sw_url)
        floor = None
        if "uploads" in opts.rows:
            console.print(
                "starting the stack floor (its own Postgres and nats-server, ticket, origin and replica processes)..."
            )
            floor = await stack.enter_async_context(stack_floor(work / "floor"))
        uploads = UploadRow(session, cluster, opts, bases, sw, floor, everything, run.uploaded)
        chosen = [
            (name, row, loads)
            for name, rows, loads in (
                ("gets", [get_row], get_loads),
                ("front", front_rows, front_loads),
                ("lookups", [lookup_row], lookup_loads),
                ("uploads", [uploads.row], uploads.loads()),
            )
            for row in rows
            if name in opts.rows
        ]
        run.rows += [row for _name, row, _loads in chosen]
        for r in range(opts.runs):
            for _name, _row, loads in chosen:
                for load in loads if r % 2 == 0 else loads[::-1]:
                    sample = await _measure(load, r)
                    console.print(
                        f"run {r + 1}/{opts.runs}: {load.contender.name}: {sample.rate:,.0f}/s, "
                        f"p99 {sample.p99_ms:.1f} ms",
                        highlight=False,
                    )
        if "uploads" in opts.rows:
            await uploads.summarise()


async def _measure(load: Load, r: int) -> Sample:
    window = CpuWindow(load.servers)
    window.start()
    result = await load.run(r)
    cpu = window.stop()
    sample = Sample(result.rate, result.p50_ms, result.p99_ms, result.requests, cpu)
    load.contender.samples.append(sample)
    return sample


class UploadRow:
    """Row 4: the same files through minicdn and SeaweedFS, one batch per run."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        cluster: ClusterRef,
        opts: PeersOptions,
        bases: list[bytes],
        sw: SeaweedFS | None,
        floor: StackFloor | None,
        servers: list[Server],
        uploaded: list[str],
    ) -> None:
        self.session, self.cluster, self.opts, self.bases, self.sw = session, cluster, opts, bases, sw
        self.floor = floor
        self.uploaded = uploaded
        self.token = secrets.token_hex(4)
        self.bodies: dict[int, list[bytes]] = {}
        self.row = Row(
            "uploads", f"uploads, {opts.concurrency} in flight", "files/s", Contender("minicdn (ticket + PUT)")
        )
        self._loads = [Load(self.row.minicdn, servers, self._minicdn)]
        self.seaweed: Contender | None = None
        self.floor_contender: Contender | None = None
        if sw is not None:
            servers = [Server(k, frozenset({pid})) for k, pid in sw.pids.items()]
            peer = self.seaweed = Contender("SeaweedFS (assign + PUT, replication 100)")
            self.row.peers.append(peer)
            self.row.targets[peer.name] = Target(0.25, "issue 16")
            self._loads.append(Load(peer, servers, partial(self._seaweed, fsync=False)))
            # No target: what SeaweedFS's rate is with minicdn's durability (every copy on disk before the answer).
            durable = Contender("SeaweedFS (the same, fsync=true)")
            self.row.peers.append(durable)
            self._loads.append(Load(durable, servers, partial(self._seaweed, fsync=True)))
        if floor is not None:
            # No target: the same parts as minicdn with only its durability (``minicdn.bench.stack_floor``).
            self.floor_contender = Contender("stack floor (same parts, durability only)")
            self.row.peers.append(self.floor_contender)
            servers = [Server(f"floor {k}", pids) for k, pids in floor.pids.items()]
            self._loads.append(Load(self.floor_contender, servers, self._floor))
        self.ready_ms: list[float] = []
        self.replicated_ms: list[float] = []
        self.drain_s: list[float] = []
        self.client_cpu: list[float] = []  # this process's CPU per 1,000 files, both contenders
        self.stage_runs: list[list[StageFigure]] = []  # each run's stage budget (``minicdn.bench.budget``)
        self.node_urls: list[str] | None = None  # every node's, for their stage counters (None: not read yet)

    def loads(self) -> list[Load]:
        return self._loads

    def _files(self, r: int) -> list[bytes]:
        if r not in self.bodies:
            self.bodies = {r: upload_bodies(self.bases, self.opts.uploads, f"{self.token}-{r}")}
        return self.bodies[r]

    async def _timed(self, one: Callable[[int], Awaitable[object]], n: int) -> LoadResult:
        me = psutil.Process()
        before = sum(me.cpu_times()[:2])
        fig = await run_load(n, self.opts.concurrency, one)
        self.client_cpu.append((sum(me.cpu_times()[:2]) - before) / n * 1000)
        return LoadResult(n, fig.seconds, 0, fig.pct(50) * 1000, fig.pct(99) * 1000)

    async def _seaweed(self, r: int, *, fsync: bool) -> LoadResult:
        assert self.sw is not None
        files, sw = self._files(r), self.sw
        return await self._timed(lambda i: sw.write(self.session, files[i], fsync=fsync), len(files))

    async def _floor(self, r: int) -> LoadResult:
        assert self.floor is not None
        files, floor = self._files(r), self.floor
        result = await self._timed(lambda i: floor.write(self.session, files[i], f"{r}-{i}.jpg"), len(files))
        await floor.replicated()  # the CPU window (around this call) ends when both copies are committed
        return result

    async def _stages(self) -> Counters | None:
        """Every node's stage counters (None when the nodes are not listed to this key, or do not answer)."""
        try:
            if self.node_urls is None:
                nodes = (await get_json(self.session, self.cluster, "/v1/nodes"))["nodes"]
                self.node_urls = [str(n["base_url"]) for n in nodes if n.get("base_url")]
            return await read_stages(self.session, self.node_urls)
        except (aiohttp.ClientError, KeyError, ValueError, RuntimeError):
            self.node_urls = []
            return None

    async def _minicdn(self, r: int) -> LoadResult:
        files, tag = self._files(r), f"minicdn-bench-{self.token}-{r}"
        before = await self._stages()
        result = await self._timed(
            lambda i: upload_one(self.session, self.cluster, files[i], self.uploaded, tags=[tag]), len(files)
        )
        # The files/s figure ends at the last 201; the CPU window (around this call) ends when all is done.
        acked = time.perf_counter()
        images = await drained(self.session, self.cluster, tag, len(files))
        self.drain_s.append(time.perf_counter() - acked)
        for image in images:
            uploaded_at = datetime.fromisoformat(image["uploaded_at"])
            self.ready_ms.append((datetime.fromisoformat(image["ready_at"]) - uploaded_at).total_seconds() * 1000)
            last = max(datetime.fromisoformat(rep["verified_at"]) for rep in image["replicas"])
            self.replicated_ms.append((last - uploaded_at).total_seconds() * 1000)
        after = await self._stages()
        if before is not None and after is not None:
            self.stage_runs.append(per_upload(before, after, len(files)))
        return result

    async def summarise(self) -> None:
        """The figures behind minicdn's upload rate, in the row's details, and its budget."""
        bodies = next(iter(self.bodies.values()), [])
        add = self.row.details.append
        add(Detail("files_per_run", "files a run", self.opts.uploads))
        if bodies:
            add(Detail("mean_file_kb", "mean size", statistics.mean(len(b) for b in bodies) / 1024, "KB"))
        for key, label, values in (
            ("ready", "minicdn 201 -> ready", self.ready_ms),
            ("replicated", "201 -> every replica ok", self.replicated_ms),
        ):
            if values:  # every image of every run
                ordered = sorted(values)
                add(Detail(f"{key}_p50_ms", f"{label} p50", ordered[len(ordered) // 2], "ms"))
                add(Detail(f"{key}_p99_ms", "p99", ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], "ms"))
                add(Detail(f"{key}_max_ms", "max", ordered[-1], "ms"))
        if self.drain_s:
            add(Detail("drain_s", "last 201 -> all ready everywhere", statistics.median(self.drain_s), "s"))
        if self.seaweed and self.floor_contender and (sw_rate := self.seaweed.median("rate")):
            floor_rate = self.floor_contender.median("rate") or 0.0
            add(Detail("floor_vs_seaweedfs", "stack floor / SeaweedFS", floor_rate / sw_rate, "x"))
        if self.client_cpu:
            add(Detail("client_cpu_s_per_1k", "upload client CPU s / 1k files", statistics.median(self.client_cpu)))
        if self.stage_runs or bodies:
            floor = await floor_of(bodies) if bodies else {}
            # CPU s per 1,000 files is CPU ms per file.
            mine = self.row.minicdn
            stages = median_figures(self.stage_runs) if self.stage_runs else []
            self.row.budget = budget_json(stages, mine.cpu_by_server(), mine.median("rate"), floor)
            if not self.stage_runs:
                self.row.notes.append("stage budget not measured: the nodes' /metrics could not be read")


async def drained(
    session: aiohttp.ClientSession, cluster: ClusterRef, tag: str, n: int, timeout_s: float = 600
) -> list[dict[str, Any]]:
    """Until the ``n`` images tagged ``tag`` are `ready` with every replica `ok`. While some are still being
    processed it asks for one of those only; then lists them all (1,000 a page): so the waiting costs the
    query service little next to the work it waits for, which the CPU figure counts."""
    deadline = time.monotonic() + timeout_s

    async def listing(limit: int, **filters: str) -> list[dict[str, Any]]:
        images: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = {"tags": tag, "limit": limit, **filters, **({"cursor": cursor} if cursor else {})}
            page = await get_json(session, cluster, "/v1/images", params)
            images += page["images"]
            if limit < 1000 or not (cursor := page.get("next_cursor")):
                return images

    while True:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} uploads not all ready on every replica after {timeout_s:g} s")
        if await listing(1, status="uploaded,processing"):
            await asyncio.sleep(0.25)
            continue
        images = await listing(1000)
        bad = [i for i in images if i["status"] != "ready"]
        if bad:
            raise RuntimeError(f"{len(bad)} bench upload(s) {bad[0]['status']}: {bad[0].get('reason')}")
        if len(images) >= n and all(i["replicas"] and all(r["state"] == "ok" for r in i["replicas"]) for i in images):
            return images
        await asyncio.sleep(0.25)
