"""GET /openapi.json describes the query service, and schemathesis, driven by it against a live cluster,
finds no 5xx, no undocumented status, and no response that breaks its schema.

Bounded: a fixed number of generated requests per operation (derandomized, so a run is repeatable).
schemathesis speaks sync `requests`, so it runs in a thread while the cluster serves on the loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hypothesis
import schemathesis
from hypothesis import HealthCheck
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.cluster import TestCluster, make_jpeg

EXAMPLES_PER_OPERATION = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def fuzz(base_url: str, headers: dict[str, str], known_image: str) -> dict[str, int]:
    """Run every operation's strategy; returns the number of calls per operation (failures raise)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    calls: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        strategies = [operation.as_strategy()]
        if "{image_id}" in operation.path:  # also aim at an image that exists, not only at random ids
            strategies.append(operation.as_strategy(path_parameters={"image_id": known_image}))
        label = operation.label
        for strategy in strategies:
            _run_bounded(strategy, base_url, headers, label, calls)
    return calls


def _run_bounded(strategy: Any, base_url: str, headers: dict[str, str], label: str, calls: dict[str, int]) -> None:
    @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                         derandomize=True, suppress_health_check=list(HealthCheck),
                         phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
    @hypothesis.given(case=strategy)
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=15, allow_redirects=False)
        case.validate_response(response, checks=CHECKS)
        calls[label] = calls.get(label, 0) + 1

    run()


async def test_openapi_document_and_schemathesis(cluster: TestCluster) -> None:
    assert cluster.session is not None
    async with cluster.session.get(f"{cluster.query_url}/openapi.json") as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        doc = await resp.json()
    assert doc["openapi"].startswith("3.") and "/v1/uploads" in doc["paths"] and "/v1/keys" in doc["paths"]
    up = await cluster.upload(make_jpeg(seed=40))
    await cluster.wait_ready(up["image_id"])
    await cluster.wait_replicated(up["image_id"])
    calls = await asyncio.to_thread(fuzz, cluster.query_url, cluster.auth, up["image_id"])
    assert set(calls) >= {"POST /v1/uploads", "GET /v1/images/{image_id}", "GET /v1/images/{image_id}/url",
                          "GET /img/{image_id}",
                          "DELETE /v1/images/{image_id}", "GET /v1/keys", "POST /v1/keys", "DELETE /v1/keys/{key_id}",
                          "GET /v1/nodes", "GET /healthz"}
    # Parameterless operations yield one distinct case; the others many.
    assert calls["POST /v1/uploads"] >= 10 and calls["GET /v1/images/{image_id}/url"] >= 20, calls
