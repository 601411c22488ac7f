"""An in-process three-region cluster for tests: three storage nodes (each with its replicator) and a
query service, on real Postgres, NATS and libvips, each app on its own free port. Nodes can be
stopped and started again to simulate outages."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from common.config import Settings, load_settings
from common.db.api_keys import create_key
from common.db.pool import open_pool
from common.geo import REGIONS
from common.procs import free_port
from storage_node.objects.store import Store

# region -> (network in the test GeoIP database, a client address inside it)
REGION_IPS = {
    "us-east": ("3.0.0.0/16", "3.0.1.10"),
    "eu-west": ("52.16.0.0/16", "52.16.1.10"),
    "ap-southeast": ("13.228.0.0/16", "13.228.1.10"),
}
NODE_REGIONS = ("us-east", "eu-west", "ap-southeast")


# The `make_cluster` fixture (tests/conftest.py): a cluster built with extra settings, started, stopped at the end.
MakeCluster = Callable[..., Awaitable["TestCluster"]]


class TestCluster:
    __test__ = False  # not a test class

    def __init__(
        self,
        root: Path,
        database_url: str,
        nats_url: str,
        geoip_db: str,
        node_capacity_bytes: int = 0,
        extra: dict[str, dict[str, Any]] | None = None,
        cold_tier: bool = False,
    ) -> None:
        self.root = root
        self.node_capacity_bytes = node_capacity_bytes
        self.cold_tier = cold_tier  # each node gets a cold directory beside its data directory
        tag = secrets.token_hex(4)
        self.common: dict[str, dict[str, Any]] = {
            "database": {"url": database_url, "pool_max": 6},
            "nats": {"url": nats_url, "stream": f"T{tag.upper()}", "subject_prefix": f"t{tag}"},
            "signing": {"keys": {"k1": secrets.token_urlsafe(24)}, "active_kid": "k1"},
            "health": {"heartbeat_timeout_s": 1.5, "recover_s": 0.6},
            "replicator": {"sweep_interval_s": 0.5, "sweep_age_s": 0.5, "fetch_timeout_s": 10},
            "geoip": {"db": geoip_db},
            "capacity": {"interval_s": 0.5},
        }
        for section, values in (extra or {}).items():
            self.common.setdefault(section, {}).update(values)
        self.node_settings: dict[str, Settings] = {}
        self.runners: dict[str, web.AppRunner] = {}
        self.apps: dict[str, web.Application] = {}
        self.api_key = ""
        self.query_url = ""
        self.session: aiohttp.ClientSession | None = None

    def settings(self, **sections: dict[str, Any]) -> Settings:
        merged = {k: dict(v) for k, v in self.common.items()}
        for name, values in sections.items():
            merged.setdefault(name, {}).update(values)
        return load_settings(env={}, overrides=merged)

    async def start(self) -> None:
        for region in NODE_REGIONS:
            port = free_port()
            point = REGIONS[region]
            node_id = f"{region}-1"
            self.node_settings[node_id] = self.settings(
                node={
                    "node_id": node_id,
                    "region": region,
                    "lat": point.lat,
                    "lon": point.lon,
                    "set_id": "set-1",
                    "base_url": f"http://127.0.0.1:{port}",
                    "port": port,
                    "data_dir": str(self.root / node_id),
                    "heartbeat_interval_s": 0.3,
                    "render_threads": 2,
                    "capacity_bytes": self.node_capacity_bytes,
                    "cold_dir": str(self.root / f"{node_id}-cold") if self.cold_tier else "",
                }
            )
        await asyncio.gather(*(self.start_node(n) for n in self.node_settings))
        port = free_port()
        self.query_url = f"http://127.0.0.1:{port}"
        query_settings = self.settings(
            # One chart point a second (not 30 s), so tests lasting seconds see a history with several points.
            query={
                "port": port,
                "public_url": self.query_url,
                "node_refresh_s": 0.3,
                "stats_interval_s": 0.3,
                "history_points": 3600,
            }
        )
        from query_service.app import create_app

        await self._serve("query", create_app(query_settings), port, lane="query")
        async with open_pool(query_settings.database) as pool:
            _key, self.api_key = await create_key(pool, "tests", ("app", "admin"), rate_per_s=0)
        self.session = aiohttp.ClientSession()
        await self.wait_for(lambda: self.healthy_count(3), "three healthy nodes")

    async def start_query(self, name: str, worker: int = 0, **query: Any) -> str:
        """Another query-service instance on the same database and NATS (they share nothing else); ``query``
        overrides its `[query]` settings; ``worker`` other than 0: a worker that runs no singletons."""
        from query_service.app import create_app

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        settings = self.settings(query={"port": port, "public_url": url, "node_refresh_s": 0.3, **query})
        await self._serve(name, create_app(settings, worker=worker), port, lane="query")
        return url

    async def supervise(self, spool: Path) -> None:
        """What `minicdn dev` does for the local provisioner: start a node for every config it writes."""
        while True:
            found = await asyncio.to_thread(lambda: sorted(spool.glob("*.toml")) if spool.exists() else [])
            for path in found:
                node_id = path.stem
                if node_id not in self.node_settings:
                    settings = load_settings(
                        path,
                        env={},
                        overrides={
                            "node": {"heartbeat_interval_s": 0.3, "render_threads": 1},
                            "replicator": self.common["replicator"],
                        },
                    )
                    self.node_settings[node_id] = settings
                    await self.start_node(node_id)
            await asyncio.sleep(0.1)

    def _runner_options(self, name: str) -> dict[str, Any]:
        """aiohttp runner arguments for process ``name`` (no access log)."""
        return {"access_log": None}

    async def _serve(self, name: str, app: web.Application, port: int, lane: str = "") -> None:
        """Serve ``app`` on ``port``; ``lane`` "node" or "query": as that process listens, its fast lane first."""
        runner = web.AppRunner(app, handler_cancellation=True, **self._runner_options(name))
        try:
            await runner.setup()
        except BaseException:
            await runner.cleanup()  # a failed start lets go of what it took (the data directory's lock too)
            raise
        if lane == "node":
            from replicator.node_root import node_site

            await node_site(runner, app, "127.0.0.1", port).start()
        elif lane == "query":
            from query_service.app import query_site

            await query_site(runner, app, "127.0.0.1", port, reuse_port=False).start()
        else:
            await web.TCPSite(runner, "127.0.0.1", port).start()
        self.runners[name] = runner
        self.apps[name] = app

    async def start_node(self, node_id: str) -> None:
        from replicator.node_root import create_node_app

        settings = self.node_settings[node_id]
        await self._serve(node_id, create_node_app(settings), settings.node.port, lane="node")

    async def stop_node(self, node_id: str) -> None:
        runner = self.runners.pop(node_id)
        self.apps.pop(node_id)
        await runner.cleanup()

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        for name in list(self.runners):
            await self.runners.pop(name).cleanup()

    # --- helpers used by the tests ------------------------------------------------------------------
    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def store(self, node_id: str) -> Store:
        node = self.node_settings[node_id].node
        return Store(node.data_dir, cold_dir=node.cold_dir)

    def disk_sha256(self, node_id: str, image_id: str) -> str | None:
        path = self.store(node_id).original_path(image_id)  # either tier
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None

    def files_under(self, node_id: str, sub: str = "") -> list[Path]:
        base = Path(self.node_settings[node_id].node.data_dir) / sub
        return sorted(p for p in base.rglob("*") if p.is_file())

    async def api(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        assert self.session is not None
        headers = {**self.auth, **kw.pop("headers", {})}
        async with self.session.request(method, f"{self.query_url}{path}", headers=headers, **kw) as resp:
            return resp.status, await resp.json(content_type=None)

    async def request_upload(self, **fields: Any) -> dict[str, Any]:
        status, body = await self.api("POST", "/v1/uploads", json=fields)
        assert status == 201, body
        return dict(body)

    async def put(self, url: str, data: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        assert self.session is not None
        async with self.session.put(url, data=data, headers=headers or {}) as resp:
            return resp.status, await resp.json(content_type=None)

    async def upload(self, data: bytes, **fields: Any) -> dict[str, Any]:
        ticket = await self.request_upload(**fields)
        status, body = await self.put(ticket["upload_url"], data)
        assert status == 201, body
        return {**ticket, **body}

    async def replicas(self, image_id: str) -> dict[str, str]:
        status, body = await self.api("GET", f"/v1/images/{image_id}")
        assert status == 200, body
        return {r["node_id"]: r["state"] for r in body["replicas"]}

    async def wait_replicated(self, image_id: str, timeout_s: float = 15) -> None:
        async def all_ok() -> bool:
            states = await self.replicas(image_id)
            return len(states) == 3 and set(states.values()) == {"ok"}

        await self.wait_for(all_ok, f"{image_id} on every node", timeout_s)

    async def wait_ready(self, image_id: str, timeout_s: float = 15, status: str = "ready") -> dict[str, Any]:
        """Wait until processing has settled the image (``ready`` unless told otherwise); return its record."""
        seen: dict[str, Any] = {}

        async def settled() -> bool:
            code, body = await self.api("GET", f"/v1/images/{image_id}")
            seen.update(body if code == 200 else {})
            return code == 200 and body["status"] not in ("uploaded", "processing")

        await self.wait_for(settled, f"{image_id} processed", timeout_s)
        assert seen["status"] == status, seen
        return seen

    def healthy_count(self, n: int) -> bool:
        from query_service import keys

        registry = self.apps["query"][keys.REGISTRY] if "query" in self.apps else None
        return registry is not None and sum(registry.healthy(x) for x in registry.nodes.values()) == n

    @staticmethod
    async def wait_for(check: Callable[[], bool | Awaitable[bool]], what: str, timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
            await asyncio.sleep(0.05)


def make_jpeg(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    """A real JPEG made with libvips (noise, so each seed differs and sizes are realistic)."""
    import pyvips

    image = pyvips.Image.gaussnoise(width, height, mean=128 + seed % 50, sigma=40).cast("uchar")
    image = image.bandjoin([image, image]).copy(interpretation="srgb")
    return bytes(image.jpegsave_buffer(Q=85))
