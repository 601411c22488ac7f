"""The stand-alone replicator process: its /metrics and /healthz endpoint."""

from __future__ import annotations

import contextlib

import aiohttp

from common.metrics import HttpMetrics, ReplicationMetrics
from common.procs import free_port
from replicator.standalone import serve_metrics


async def test_standalone_replicator_serves_its_metrics() -> None:
    metrics = HttpMetrics("replicator")
    replication = ReplicationMetrics(metrics.registry, "eu-west-1")
    replication.count("copied")
    replication.observe_lag(0.4)
    port = free_port()
    async with contextlib.AsyncExitStack() as stack:
        await serve_metrics(stack, metrics, "127.0.0.1", port)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
            async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200 and (await resp.json())["component"] == "replicator"
    assert 'minicdn_replication_copies_total{node_id="eu-west-1",outcome="copied"} 1.0' in text
    assert 'minicdn_replication_lag_seconds_count{node_id="eu-west-1"} 1.0' in text
    assert replication.copied == 1 and replication.recent.summary() == (0.4, 0.4)
