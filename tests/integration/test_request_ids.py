"""Request ids: one access line per request, and the id of `POST /v1/uploads` travels to the node's
PUT, the JetStream event, the replicators' copies and the peer fetches they make."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from common.reqlog import RequestIdFilter, access_logger_for
from minicdn.embedded import EmbeddedNats
from tests.cluster import TestCluster, make_jpeg


class LoggedCluster(TestCluster):
    """The test cluster with the production access logger on every app."""

    def _runner_options(self, name: str) -> dict[str, Any]:
        component = "query-service" if name.startswith("query") else "storage-node"
        return {"access_log": logging.getLogger("minicdn.access"), "access_log_class": access_logger_for(component)}


async def test_request_id_travels_from_the_query_service_to_every_node(
    tmp_path: Path, database_url: str, nats_server: EmbeddedNats, geoip_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="minicdn.access")
    caplog.set_level(logging.INFO, logger="replicator.jobs")
    caplog.handler.addFilter(RequestIdFilter())
    cluster = LoggedCluster(tmp_path, database_url, nats_server.url, geoip_db)
    await cluster.start()
    try:
        assert cluster.session is not None
        rid = "trace-abc.123"
        async with cluster.session.post(
            f"{cluster.query_url}/v1/uploads", json={}, headers={**cluster.auth, "X-Request-Id": rid}
        ) as resp:
            assert resp.status == 201
            assert resp.headers["X-Request-Id"] == rid
            ticket = await resp.json()
        assert parse_qs(urlsplit(ticket["upload_url"]).query)["rid"] == [rid]
        async with cluster.session.put(ticket["upload_url"], data=make_jpeg(120, 90)) as resp:  # no header
            assert resp.status == 201
            assert resp.headers["X-Request-Id"] == rid
        await cluster.wait_replicated(ticket["image_id"])
        origin = ticket["node_id"]
        others = sorted(set(cluster.node_settings) - {origin})

        def lines(**match: object) -> list[logging.LogRecord]:
            return [r for r in caplog.records if all(getattr(r, k, None) == v for k, v in match.items())]

        await cluster.wait_for(lambda: len(lines(route="/peer/objects/{image_id}")) >= 2, "the peer fetch lines")
        assert [r.status for r in lines(route="/v1/uploads", request_id=rid)] == [201]  # type: ignore[attr-defined]
        put = lines(route="/upload/{image_id}", request_id=rid)
        assert len(put) == 1 and put[0].component == "storage-node"  # type: ignore[attr-defined]
        assert "sig=" not in put[0].getMessage()  # signed query strings never reach the log
        peer_fetches = lines(route="/peer/objects/{image_id}")
        assert {r.request_id for r in peer_fetches} == {rid}  # type: ignore[attr-defined]
        copies = [r for r in caplog.records if r.name == "replicator.jobs" and "replicated" in r.getMessage()]
        assert len(copies) == len(others) and {r.request_id for r in copies} == {rid}  # type: ignore[attr-defined]

        # A request without an id gets a fresh one; a malformed id is replaced, not logged.
        async with cluster.session.get(f"{cluster.query_url}/healthz", headers={"X-Request-Id": "bad id"}) as resp:
            fresh = resp.headers["X-Request-Id"]
        assert fresh != "bad id" and len(fresh) == 16
        async with cluster.session.get(f"{cluster.query_url}/v1/images/nope") as resp:
            assert resp.status == 404 and resp.headers["X-Request-Id"]
    finally:
        await cluster.stop()
