"""The fault suite's steady background load, and the HTTP reads its checks share.

A thread of its own runs an asyncio loop (so the load keeps its pace whatever the test thread does, blocked
in a signal, a file edit or a psycopg query): a few uploads a second of small real JPEGs (libvips noise, so
each differs) from clients in every region, one in ten of them bytes the cluster must refuse, and lookups
of images already seen `ready`, each through the query service's URL and then the node (following 307s),
checking an original's bytes against the SHA-256 recorded when it was sent. Every attempt is recorded
with its times (``time.monotonic()``) and outcome, so a fault's error rate is read off afterwards.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import itertools
import random
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urljoin

import aiohttp

from tests.cluster import REGION_IPS, make_jpeg

T = TypeVar("T")
REGIONS = tuple(REGION_IPS)
CLIENT_IP = {region: sample for region, (_network, sample) in REGION_IPS.items()}
REQUEST_TIMEOUT_S = 5.0  # every request of the load: a hung node costs a failure, never a stuck load
JPEG_MAGIC = b"\xff\xd8\xff"
# Bytes the cluster must refuse: no image at all (refused at the PUT), or the first half of a JPEG (its header
# is whole, so the PUT takes it; processing must reject it: libvips reports a premature end as an error, while
# junk scan data of the right length decodes, with warnings, into a picture of noise).


@dataclass
class Upload:
    seq: int
    region: str
    good: bool  # a real JPEG; False: bytes the cluster must refuse (at the PUT, or by processing)
    sha256: str
    size: int
    t_start: float
    t_end: float = 0.0
    image_id: str | None = None
    node_id: str | None = None
    outcome: str = "in_flight"  # acked (PUT 201) | refused (a 4xx/503 answer) | failed (5xx, timeout, reset)
    detail: str = ""
    ready_at: float | None = None  # first seen `ready` (good ones)

    @property
    def acked(self) -> bool:
        return self.outcome == "acked" and self.image_id is not None


@dataclass
class Lookup:
    t_start: float
    region: str
    image_id: str
    kind: str  # "original" (bytes checked against the recorded hash) | "variant" (w150.jpg: a JPEG)
    t_url: float = 0.0  # when the query service answered with a URL (0: it did not)
    t_end: float = 0.0
    node_id: str = ""  # the node the URL named
    outcome: str = "in_flight"  # ok | lookup_failed | url_failed | wrong_bytes
    detail: str = ""
    probe: bool = False  # a fault's probe (see Load.probe), not the steady load: left out of error rates


@dataclass
class Fetched:
    status: int  # the last answer's status (0: no answer: refused, reset, timed out)
    body: bytes
    url: str  # the last URL asked
    hops: int
    error: str = ""


async def fetch(session: aiohttp.ClientSession, url: str, max_hops: int = 3) -> Fetched:
    """GET ``url``, following 307/302 by hand (so each hop is seen); a transport error is status 0."""
    hops = 0
    while True:
        try:
            async with session.get(url, allow_redirects=False) as resp:
                if resp.status in (302, 307) and "Location" in resp.headers and hops < max_hops:
                    url, hops = urljoin(url, resp.headers["Location"]), hops + 1
                    continue
                return Fetched(resp.status, await resp.read(), url, hops)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return Fetched(0, b"", url, hops, f"{type(exc).__name__}: {exc}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Load:
    """Background uploads and lookups against one cluster; start(), then stop() (idempotent)."""

    query_url: str
    api_key: str
    upload_rate: float = 2.0  # uploads per second, all regions together
    lookup_rate: float = 8.0  # lookups per second
    uploads: list[Upload] = field(default_factory=list)
    lookups: list[Lookup] = field(default_factory=list)
    hidden: set[str] = field(default_factory=set)  # images the load and the probes leave unread for now

    def __post_init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="fault-load", daemon=True)
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.session: aiohttp.ClientSession | None = None
        self.crashed: BaseException | None = None
        self._seq = itertools.count()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    # --- the thread and its loop ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "the load thread did not start"

    def stop(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run ``coro`` on the load's loop (its session, beside the load) and wait for its result."""
        assert self._thread.is_alive(), f"the load thread is gone: {self.crashed!r}"
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # reported by the checks (a thread's exception would only warn)
            self.crashed = exc
        finally:
            self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self.session = session
            self._ready.set()
            tasks = [asyncio.create_task(c) for c in (self._upload_loop(), self._lookup_loop(), self._ready_loop())]
            await self._stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Let in-flight requests end (each is bounded by REQUEST_TIMEOUT_S) before the session closes.
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if pending:
                await asyncio.wait(pending, timeout=REQUEST_TIMEOUT_S + 1)

    # --- uploads ----------------------------------------------------------------------------------------
    async def _upload_loop(self) -> None:
        in_flight: set[asyncio.Task[Upload]] = set()
        while True:
            await asyncio.sleep(1 / self.upload_rate)
            if len(in_flight) >= 4:
                continue
            seq = next(self._seq)
            region = REGIONS[seq % len(REGIONS)]
            task = asyncio.create_task(self.upload(region, good=seq % 10 != 9, seq=seq))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)

    async def upload(self, region: str, good: bool = True, seq: int | None = None, size: int = 160) -> Upload:
        """One upload from a client in ``region``: a ticket, then the PUT; recorded whatever happens."""
        seq = next(self._seq) if seq is None else seq
        if good:
            data = await asyncio.to_thread(make_jpeg, size, size * 3 // 4, seq)
        elif seq % 20 == 9:
            data = b"this is not an image at all, " * 40
        else:
            real = await asyncio.to_thread(make_jpeg, 64, 48, seq)
            data = real[: len(real) // 2]  # header intact, so the PUT takes it; the decode fails
        up = Upload(seq, region, good, sha256(data), len(data), time.monotonic())
        with self.lock:
            self.uploads.append(up)
        assert self.session is not None
        try:
            async with self.session.post(
                f"{self.query_url}/v1/uploads",
                json={"size": len(data), "client_ip": CLIENT_IP[region], "filename": f"load-{seq}.jpg"},
                headers=self.auth,
            ) as resp:
                ticket = await resp.json(content_type=None)
                if resp.status != 201:
                    up.outcome = "refused" if resp.status < 500 or resp.status == 503 else "failed"
                    up.detail = f"ticket {resp.status} {_code(ticket)}"
                    return up
            up.image_id, up.node_id = ticket["image_id"], ticket["node_id"]
            async with self.session.put(
                ticket["upload_url"], data=data, headers={"Content-Type": "application/octet-stream"}
            ) as resp:
                answer = await resp.json(content_type=None)
                if resp.status == 201:
                    up.outcome = "acked"
                else:
                    up.outcome = "refused" if 400 <= resp.status < 500 else "failed"
                    up.detail = f"PUT {resp.status} {_code(answer)}"
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            up.outcome, up.detail = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            up.t_end = time.monotonic()
        return up

    async def _ready_loop(self) -> None:
        """Watch acknowledged good uploads until `ready`, so lookups ask only for servable images."""
        while True:
            await asyncio.sleep(0.5)
            with self.lock:
                waiting = [u for u in self.uploads if u.acked and u.good and u.ready_at is None]
            for up in waiting[:40]:
                await self.status_of(up)

    async def status_of(self, up: Upload) -> str | None:
        assert self.session is not None and up.image_id is not None
        try:
            async with self.session.get(f"{self.query_url}/v1/images/{up.image_id}", headers=self.auth) as resp:
                if resp.status != 200:
                    return None
                status = str((await resp.json())["status"])
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return None
        if status == "ready" and up.ready_at is None:
            up.ready_at = time.monotonic()
        return status

    # --- lookups ----------------------------------------------------------------------------------------
    async def _lookup_loop(self) -> None:
        in_flight: set[asyncio.Task[Lookup]] = set()
        rng = random.Random(12)
        while True:
            await asyncio.sleep(1 / self.lookup_rate)
            with self.lock:
                ready = [u for u in self.uploads if u.ready_at is not None and u.image_id not in self.hidden]
            if not ready or len(in_flight) >= 8:
                continue
            up = rng.choice(ready)
            task = asyncio.create_task(self.lookup(up, rng.choice(REGIONS), rng.choice(("original", "variant"))))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)

    async def url_node(self, up: Upload, region: str) -> str | None:
        """The node the query service names for a client in ``region`` now (None: no URL); nothing is fetched, so
        a hung node cannot slow a probe down."""
        assert self.session is not None and up.image_id is not None
        try:
            async with self.session.get(
                f"{self.query_url}/v1/images/{up.image_id}/url",
                params={"client_ip": CLIENT_IP[region], "w": "150"},
                headers=self.auth,
            ) as resp:
                answer = await resp.json(content_type=None)
                return str(answer["node_id"]) if resp.status == 200 else None
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return None

    def probe(self, stop: threading.Event) -> concurrent.futures.Future[int]:
        """Until ``stop`` is set, read `ready` images from every region as fast as 12 clients can, recorded
        as probes: while a fault lasts, every URL handed out after its detection is tried, not only the few the
        steady load asks for. The future's result is how many were read."""

        async def run() -> int:
            rng, count = random.Random(34), 0
            while not stop.is_set():
                with self.lock:
                    ready = [u for u in self.uploads if u.ready_at is not None and u.image_id not in self.hidden]
                # Per region one image at random and three of the ten newest: read on few nodes yet, so a
                # node's memory of them (e.g. its serve gate's) is least likely to hide a dependency on the fault.
                picks = [rng.choice(ready), *rng.sample(ready[-10:], min(3, len(ready)))] if ready else []
                batch = [(pick, region) for region in REGIONS for pick in picks]
                await asyncio.gather(*(self.lookup(up, region, "variant", probe=True) for up, region in batch))
                count += len(batch)
                await asyncio.sleep(0.02)
            return count

        return asyncio.run_coroutine_threadsafe(run(), self.loop)

    async def lookup(self, up: Upload, region: str, kind: str, record: bool = True, probe: bool = False) -> Lookup:
        """Ask the query service for the URL a client in ``region`` gets, fetch it, check what came back."""
        assert self.session is not None and up.image_id is not None
        look = Lookup(time.monotonic(), region, up.image_id, kind, probe=probe)
        if record:
            with self.lock:
                self.lookups.append(look)
        params = {"client_ip": CLIENT_IP[region]}
        params.update({"variant": "original"} if kind == "original" else {"w": "150", "fmt": "jpeg"})
        try:
            async with self.session.get(
                f"{self.query_url}/v1/images/{up.image_id}/url", params=params, headers=self.auth
            ) as resp:
                answer = await resp.json(content_type=None)
                if resp.status != 200:
                    look.outcome, look.detail = "lookup_failed", f"url {resp.status} {_code(answer)}"
                    return look
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            look.outcome, look.detail = "lookup_failed", f"url {type(exc).__name__}: {exc}"
            return look
        finally:
            look.t_end = time.monotonic()
        look.t_url, look.node_id = time.monotonic(), str(answer["node_id"])
        got = await fetch(self.session, str(answer["url"]))
        look.t_end = time.monotonic()
        look.outcome, look.detail = judge(got, up.sha256 if kind == "original" else None)
        return look


def judge(got: Fetched, want_sha256: str | None) -> tuple[str, str]:
    """`ok`, `url_failed` (no whole 200) or `wrong_bytes` (a 200 whose bytes are not the image's)."""
    where = f"{got.url} after {got.hops} redirect(s)"
    if got.status != 200:
        return "url_failed", f"{got.status or got.error} from {where}"
    if want_sha256 is not None and sha256(got.body) != want_sha256:
        return "wrong_bytes", f"200 with {len(got.body)} bytes hashing to {sha256(got.body)[:12]} from {where}"
    if want_sha256 is None and not got.body.startswith(JPEG_MAGIC):
        return "wrong_bytes", f"200 whose {len(got.body)} bytes are not a JPEG from {where}"
    return "ok", where


def _code(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code", ""))
    return ""
