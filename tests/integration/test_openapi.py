"""GET /openapi.json describes the query service, and schemathesis, driven by it against a live cluster,
finds no 5xx, no undocumented status, and no response that breaks its schema.

Operations marked `x-destructive` (setting node states, replacing nodes) are documented but not fuzzed:
random calls would take nodes out of the cluster under test. They have their own tests (test_control*).

Bounded: a fixed number of generated requests per operation (derandomized, so a run is repeatable).
schemathesis speaks sync `requests`, so it runs in a thread while the cluster serves on the loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.cluster import TestCluster, make_jpeg

EXAMPLES_PER_OPERATION = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def fuzz(base_url: str, headers: dict[str, str], known_image: str, known_node: str) -> dict[str, int]:
    """Run every non-destructive operation's strategy; returns the number of calls per operation (failures raise)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    calls: dict[str, int] = {}
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # an operation schemathesis cannot read: fail with its reason
            raise result.err()
        operation = result.ok()
        if operation.definition.raw.get("x-destructive"):
            continue
        strategies = [operation.as_strategy()]
        if "{image_id}" in operation.path:  # also aim at an image that exists, not only at random ids
            strategies.append(operation.as_strategy(path_parameters={"image_id": known_image}))
        if "{node_id}" in operation.path:
            strategies.append(operation.as_strategy(path_parameters={"node_id": known_node}))
        label = operation.label
        for strategy in strategies:
            _run_bounded(strategy, base_url, headers, label, calls)
    return calls


def _run_bounded(strategy: Any, base_url: str, headers: dict[str, str], label: str, calls: dict[str, int]) -> None:
    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.given(case=strategy)
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=15, allow_redirects=False)
        case.validate_response(response, checks=CHECKS)
        calls[label] = calls.get(label, 0) + 1

    run()


# schemathesis's own strategies touch the `random` module on some inputs, which Hypothesis reports as a
# deprecation; it is theirs, not ours, and must not fail the run under filterwarnings=error.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
async def test_openapi_document_and_schemathesis(cluster: TestCluster) -> None:
    assert cluster.session is not None
    async with cluster.session.get(f"{cluster.query_url}/openapi.json") as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        doc = await resp.json()
    assert doc["openapi"].startswith("3.") and "/v1/uploads" in doc["paths"] and "/v1/keys" in doc["paths"]
    up = await cluster.upload(make_jpeg(seed=40))
    await cluster.wait_ready(up["image_id"])
    await cluster.wait_replicated(up["image_id"])
    # The destructive operator endpoints are documented (and flagged), and only those are flagged.
    flagged = {
        f"{method.upper()} {path}"
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if op.get("x-destructive")
    }
    assert flagged == {"POST /v1/nodes/{node_id}/state", "POST /v1/nodes/{node_id}/replace"}
    nodes_before = {n["node_id"]: n["state"] for n in (await cluster.api("GET", "/v1/nodes"))[1]["nodes"]}
    calls = await asyncio.to_thread(fuzz, cluster.query_url, cluster.auth, up["image_id"], sorted(nodes_before)[0])
    assert set(calls) >= {
        "POST /v1/uploads",
        "GET /v1/images/{image_id}",
        "GET /v1/images/{image_id}/url",
        "GET /v1/images",
        "GET /v1/images/{image_id}/srcset",
        "GET /img/{image_id}",
        "DELETE /v1/images/{image_id}",
        "GET /v1/keys",
        "POST /v1/keys",
        "DELETE /v1/keys/{key_id}",
        "GET /v1/nodes",
        "GET /healthz",
        "GET /v1/capacity",
        "GET /v1/nodes/{node_id}/backfill",
        "GET /v1/repair",
        "POST /v1/repair",
        "POST /v1/images/{image_id}/approve",
        "POST /v1/images/{image_id}/reject",
        "GET /v1/dashboard",
    }
    assert not set(calls) & flagged
    # The run left every node where it was.
    assert {n["node_id"]: n["state"] for n in (await cluster.api("GET", "/v1/nodes"))[1]["nodes"]} == nodes_before
    # Parameterless operations yield one distinct case; the others many.
    assert calls["POST /v1/uploads"] >= 10 and calls["GET /v1/images/{image_id}/url"] >= 20, calls
