"""`minicdn bootstrap-key` and the stand-alone replicator's /metrics endpoint."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest

from common.config import DatabaseSettings, Secret
from common.db.api_keys import lookup_key
from common.db.pool import open_pool
from common.metrics import HttpMetrics, ReplicationMetrics
from common.procs import free_port
from minicdn.cli.main import main
from minicdn.runner import _serve_metrics


def test_bootstrap_key_creates_an_admin_key(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MINICDN_DATABASE_URL", database_url)
    assert main(["bootstrap-key", "--name", "first-admin"]) == 0
    plaintext = capsys.readouterr().out.strip()

    async def look() -> object:
        async with open_pool(DatabaseSettings(url=Secret(database_url))) as pool:
            return await lookup_key(pool, plaintext)

    key = asyncio.run(look())
    assert key is not None and key.is_admin and key.name == "first-admin"  # type: ignore[attr-defined]


def test_bootstrap_key_needs_a_database(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MINICDN_DATABASE_URL", raising=False)
    assert main(["bootstrap-key"]) == 2
    assert "database.url" in capsys.readouterr().err


async def test_standalone_replicator_serves_its_metrics() -> None:
    metrics = HttpMetrics("replicator")
    replication = ReplicationMetrics(metrics.registry, "eu-west-1")
    replication.count("copied")
    replication.observe_lag(0.4)
    port = free_port()
    async with contextlib.AsyncExitStack() as stack:
        await _serve_metrics(stack, metrics, "127.0.0.1", port)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
            async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200 and (await resp.json())["component"] == "replicator"
    assert 'minicdn_replication_copies_total{node_id="eu-west-1",outcome="copied"} 1.0' in text
    assert 'minicdn_replication_lag_seconds_count{node_id="eu-west-1"} 1.0' in text
    assert replication.copied == 1 and replication.recent.summary() == (0.4, 0.4)
