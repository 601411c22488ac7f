"""The upload lifecycle's ends, through a real cluster: a PUT refused for its content leaves the image `rejected`
(status, reason, callback), an unused ticket becomes `expired` within its expiry plus a sweep interval, both
are removed after the retention period leaving nothing behind, and tickets without a size fit a small node."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from common.db.pool import open_pool
from query_service import keys
from tests.cluster import MakeCluster, TestCluster, make_jpeg
from tests.receiver import CallbackReceiver

MAX_UPLOAD = 300_000


@pytest.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    started = await CallbackReceiver().start()
    try:
        yield started
    finally:
        await started.stop()


async def status_of(cluster: TestCluster, image_id: str) -> dict[str, Any]:
    code, body = await cluster.api("GET", f"/v1/images/{image_id}")
    assert code == 200, body
    return dict(body)


async def rows(cluster: TestCluster, sql: str, *params: Any) -> list[dict[str, Any]]:
    async with open_pool(cluster.settings().database, run_migrations=False) as pool, pool.connection() as conn:
        cur = await conn.execute(sql, params)
        return list(await cur.fetchall())


def objects(cluster: TestCluster) -> list[Path]:
    return [p for node_id in cluster.node_settings for p in cluster.files_under(node_id, "objects")]


def tampered(url: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query["sig"] = query["sig"][:-2] + ("AA" if query["sig"][-2:] != "AA" else "BB")
    return parts._replace(query=urlencode(query)).geturl()


async def test_refused_puts_end_rejected_with_reason_and_callback(
    make_cluster: MakeCluster, receiver: CallbackReceiver
) -> None:
    cluster = await make_cluster(limits={"max_upload_bytes": MAX_UPLOAD}, callbacks={"allow_private": True})
    receiver.signing_keys["k1"] = cluster.settings().signing_key("k1") or b""
    refusals = {
        "unsupported_type": (415, b"just some text, not a photo\n" * 100),
        "invalid_image": (422, b"\x89PNG\r\n\x1a\n" + b"\x00" * 200),
        "too_large": (413, b"\xff\xd8\xff" + bytes(MAX_UPLOAD + 1000)),
    }
    tickets = {}
    for code, (status, data) in refusals.items():
        ticket = tickets[code] = await cluster.request_upload(callback_url=receiver.url)
        assert (await status_of(cluster, ticket["image_id"]))["status"] == "requested"
        got, body = await cluster.put(ticket["upload_url"], data)
        assert (got, body["error"]["code"]) == (status, code), body
        record = await status_of(cluster, ticket["image_id"])
        assert record["status"] == "rejected" and record["reason"].startswith(f"{code}: "), record
        assert record["replicas"] == []

    await cluster.wait_for(lambda: len(receiver.delivered()) == 3, "three rejection callbacks", 10)
    by_id = {h.body["image_id"]: h for h in receiver.delivered()}
    for code, ticket in tickets.items():
        hit = by_id[ticket["image_id"]]
        assert hit.signed and hit.body["event"] == "image.rejected" and hit.body["status"] == "rejected"
        assert hit.body["reason"].startswith(f"{code}: ")

    # The ticket is used up: the same URL with a good image is a used URL now.
    got, body = await cluster.put(tickets["unsupported_type"]["upload_url"], make_jpeg(seed=3))
    assert got == 409 and body["error"]["code"] == "already_uploaded"
    assert (await status_of(cluster, tickets["unsupported_type"]["image_id"]))["status"] == "rejected"

    # A refusal that says nothing about the content (a bad signature) leaves the ticket usable.
    ticket = await cluster.request_upload()
    got, body = await cluster.put(tampered(ticket["upload_url"]), make_jpeg(seed=4))
    assert got == 403 and body["error"]["code"] == "bad_signature"
    assert (await status_of(cluster, ticket["image_id"]))["status"] == "requested"
    got, body = await cluster.put(ticket["upload_url"], make_jpeg(seed=4))
    assert got == 201, body
    await cluster.wait_ready(ticket["image_id"])
    assert [p for n in cluster.node_settings for p in cluster.files_under(n, "tmp")] == []  # no refused bytes


async def test_unused_ticket_expires_then_ended_rows_are_removed(
    make_cluster: MakeCluster, receiver: CallbackReceiver
) -> None:
    sweep_s, ttl_s = 0.3, 2  # the signed `exp` is whole seconds: at least 1 s ahead
    cluster = await make_cluster(
        signing={"upload_ttl_s": ttl_s},
        lifecycle={"sweep_interval_s": sweep_s, "retention_s": 2.0},
        callbacks={"allow_private": True},
    )
    kept = await cluster.upload(make_jpeg(seed=11))  # used in time: never expires
    await cluster.wait_ready(kept["image_id"])
    gone = await cluster.upload(make_jpeg(seed=12))
    await cluster.wait_ready(gone["image_id"])
    status, _ = await cluster.api("DELETE", f"/v1/images/{gone['image_id']}")
    assert status == 202
    await cluster.wait_for(
        lambda: not any(gone["image_id"] in str(p) for p in objects(cluster)), "the deleted image's files gone", 10
    )
    before = objects(cluster)

    ticket = await cluster.request_upload(callback_url=receiver.url)
    refused = await cluster.request_upload()
    got, _ = await cluster.put(refused["upload_url"], b"not an image at all\n" * 50)
    assert got == 415
    assert (await status_of(cluster, ticket["image_id"]))["status"] == "requested"
    exp = int(parse_qs(urlsplit(ticket["upload_url"]).query)["exp"][0])

    async def expired() -> bool:
        return bool((await status_of(cluster, ticket["image_id"]))["status"] == "expired")

    # Nothing stays `requested` past its expiry plus a sweep interval (plus slack for a loaded machine).
    await cluster.wait_for(expired, "the unused ticket expired", ttl_s + 2 * sweep_s + 3)
    assert time.time() >= exp  # not before the URL expired
    record = await status_of(cluster, ticket["image_id"])
    assert record["reason"] == "the upload URL expired before an upload"
    await cluster.wait_for(lambda: len(receiver.delivered()) == 1, "the expiry callback", 10)
    assert receiver.delivered()[0].body["event"] == "image.expired"
    # The URL itself is refused by its signature now, and the status stays final.
    got, body = await cluster.put(ticket["upload_url"], make_jpeg(seed=13))
    assert got == 403 and body["error"]["code"] == "expired"
    assert (await status_of(cluster, ticket["image_id"]))["status"] == "expired"

    # After the retention period both ended rows are gone (replicas, audit stays); the rest is untouched.
    async def removed() -> bool:
        found = await rows(
            cluster, "SELECT image_id FROM images WHERE image_id = ANY(%s)", [ticket["image_id"], refused["image_id"]]
        )
        return not found

    await cluster.wait_for(removed, "expired and rejected rows removed", 10)
    for image_id in (ticket["image_id"], refused["image_id"]):
        status, body = await cluster.api("GET", f"/v1/images/{image_id}")
        assert status == 404 and body["error"]["code"] == "not_found"
    assert (await status_of(cluster, kept["image_id"]))["status"] == "ready"
    assert (await status_of(cluster, gone["image_id"]))["status"] == "deleted"  # tombstones are kept
    # Nothing was held for them: the nodes store exactly what they did, and no row refers to them.
    assert objects(cluster) == before
    left = await rows(
        cluster, "SELECT image_id FROM replicas WHERE image_id = ANY(%s)", [ticket["image_id"], refused["image_id"]]
    )
    assert left == []
    sweeper = cluster.apps["query"][keys.LIFECYCLE]
    assert sweeper.total.expired == 1 and sweeper.total.removed == 2
    again = await sweeper.sweep_once()  # idempotent: nothing is left to do
    assert (again.expired, again.removed) == (0, 0)


async def test_tickets_without_a_size_fit_a_small_node(make_cluster: MakeCluster) -> None:
    capacity = 20_000_000  # `minicdn dev --node-capacity 20MB`: less than limits.max_upload_bytes (20 MiB)
    cluster = await make_cluster(node_capacity_bytes=capacity)
    ticket = await cluster.request_upload()  # no size: a typical upload's room is asked for, not the cap
    assert ticket["max_bytes"] == 20 * 1024 * 1024  # the URL's cap is still the limit
    got, body = await cluster.put(ticket["upload_url"], make_jpeg(seed=21))
    assert got == 201, body
    await cluster.wait_ready(ticket["image_id"])
    await cluster.wait_replicated(ticket["image_id"])
    # Placement goes by the query service's view of each node's free room, which heartbeats update.
    registry = cluster.apps["query"][keys.REGISTRY]
    await cluster.wait_for(
        lambda: all(n.free_bytes < capacity for n in registry.nodes.values()), "every node's usage reported", 5
    )
    # A stated size still needs that much room: more than any node has free is refused.
    status, body = await cluster.api("POST", "/v1/uploads", json={"size": capacity})
    assert status == 503 and body["error"]["code"] == "no_capacity"
    status, body = await cluster.api("POST", "/v1/uploads", json={"size": 1_000_000})
    assert status == 201, body
