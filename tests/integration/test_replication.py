"""An upload reaches every region byte-identical; outages and lost events are caught up."""

from __future__ import annotations

import hashlib
import json

from storage_node import keys as node_keys
from tests.cluster import NODE_REGIONS, TestCluster, make_jpeg

NODES = [f"{r}-1" for r in NODE_REGIONS]


async def test_upload_is_replicated_byte_identical_to_every_region(cluster: TestCluster) -> None:
    data = make_jpeg(seed=1)
    up = await cluster.upload(data)
    assert up["status"] == "uploaded"
    assert up["sha256"] == hashlib.sha256(data).hexdigest()
    assert up["bytes"] == len(data)
    await cluster.wait_replicated(up["image_id"], timeout_s=5)
    for node_id in NODES:
        assert cluster.disk_sha256(node_id, up["image_id"]) == up["sha256"], node_id
    status, body = await cluster.api("GET", f"/v1/images/{up['image_id']}")
    assert status == 200
    assert body["status"] in ("uploaded", "processing", "ready")
    assert body["format"] == "jpeg" and body["sha256"] == up["sha256"]
    assert sorted(r["region"] for r in body["replicas"]) == sorted(NODE_REGIONS)
    assert {r["state"] for r in body["replicas"]} == {"ok"}


async def test_stopped_node_catches_up_after_restart_without_duplicates(cluster: TestCluster) -> None:
    down = "eu-west-1"
    await cluster.stop_node(down)
    ids = [(await cluster.upload(make_jpeg(320, 240, seed=i), client_ip="3.0.1.10"))["image_id"] for i in range(5)]
    for image_id in ids:
        states = await cluster.replicas(image_id)
        assert states[down] == "pending"
    await cluster.start_node(down)
    for image_id in ids:
        await cluster.wait_replicated(image_id)
    originals = [p for p in cluster.files_under(down, "objects") if p.name == "original"]
    assert sorted(p.parent.name for p in originals) == sorted(ids)  # each exactly once
    for image_id in ids:
        assert cluster.disk_sha256(down, image_id) == cluster.disk_sha256("us-east-1", image_id)
    assert cluster.files_under(down, "tmp") == []


async def test_a_copy_made_after_the_image_is_ready_is_noted_ready_on_disk(cluster: TestCluster) -> None:
    """The node's `processed` event came before its copy (the node was down): the copy itself notes `ready` on
    disk, so every process of the node serves it without asking Postgres (storage_node.gate)."""
    late = "ap-southeast-1"
    await cluster.stop_node(late)
    ids = [(await cluster.upload(make_jpeg(320, 240, seed=60 + i), client_ip="3.0.1.10"))["image_id"] for i in range(3)]
    for image_id in ids:
        await cluster.wait_ready(image_id)
        assert cluster.store(late).ready_marked_at(image_id) is None
    await cluster.start_node(late)
    for image_id in ids:
        await cluster.wait_replicated(image_id)
        assert cluster.store(late).ready_marked_at(image_id) is not None, image_id


async def test_event_lost_by_jetstream_is_still_replicated_by_the_sweep(cluster: TestCluster) -> None:
    origin = "us-east-1"
    bus = cluster.apps[origin][node_keys.BUS]
    stream = bus.subjects.stream
    before = (await bus.js.stream_info(stream)).state.messages
    dropped: list[str] = []

    async def lose(set_id: str, event: object, image_id: str) -> None:  # JetStream "lost" this publish
        dropped.append(image_id)

    bus.publish_set_event = lose  # type: ignore[method-assign]
    up = await cluster.upload(make_jpeg(seed=7), client_ip="3.0.1.10")
    assert up["node_id"] == origin and dropped == [up["image_id"]]
    assert (await bus.js.stream_info(stream)).state.messages == before  # nothing reached the stream
    await cluster.wait_replicated(up["image_id"], timeout_s=10)
    for node_id in NODES:
        assert cluster.disk_sha256(node_id, up["image_id"]) == up["sha256"]


async def test_same_event_twice_is_a_no_op(cluster: TestCluster) -> None:
    from common.events import ImageUploaded
    from replicator.jobs import Wanted, replicate
    from replicator.node_root import REPLICATOR

    up = await cluster.upload(make_jpeg(seed=3))
    await cluster.wait_replicated(up["image_id"])
    target = next(n for n in NODES if n != up["node_id"])
    replicator = cluster.apps[target][REPLICATOR]
    before = replicator.ctx.copied
    event = ImageUploaded(up["image_id"], "set-1", up["node_id"], up["sha256"], up["bytes"], "image/jpeg")
    bus = cluster.apps[up["node_id"]][node_keys.BUS]
    await bus.js.publish(bus.subjects.set_event("set-1", "uploaded"), event.to_json())  # a redelivery
    copied = await replicate(replicator.ctx, Wanted(up["image_id"], up["sha256"], up["bytes"], "image/jpeg"))
    assert copied is False
    await cluster.wait_for(lambda: True, "settle")
    assert replicator.ctx.copied == before
    originals = [p for p in cluster.files_under(target, "objects") if p.name == "original"]
    assert len(originals) == 1


async def test_bad_checksum_from_a_peer_is_never_stored(cluster: TestCluster) -> None:
    from replicator.jobs import Wanted, replicate
    from replicator.node_root import REPLICATOR
    from replicator.outcomes import Retry

    up = await cluster.upload(make_jpeg(seed=4), client_ip="3.0.1.10")
    await cluster.wait_replicated(up["image_id"])
    target = "ap-southeast-1"
    replicator = cluster.apps[target][REPLICATOR]
    cluster.apps[target][node_keys.STORE].remove_image(up["image_id"])
    wrong = Wanted(up["image_id"], "0" * 64, up["bytes"], "image/jpeg")  # the hash the peers' bytes don't have
    try:
        await replicate(replicator.ctx, wrong)
    except Retry as exc:
        assert "checksum mismatch" in str(exc)
    else:
        raise AssertionError("a mismatching copy must not succeed")
    assert cluster.disk_sha256(target, up["image_id"]) is None
    assert cluster.files_under(target, "tmp") == []


async def test_a_burst_is_copied_in_one_batch(cluster: TestCluster) -> None:
    """``replicator.batch``: the fresh uploads of a burst share one plan, one request per peer, one store and one
    record; an image deleted meanwhile is done with nothing stored, one whose bytes do not hash to the record
    is neither stored nor done (the single-image job takes it)."""
    import aiohttp

    from common.db.pool import open_pool
    from replicator.batch import copy_batch
    from replicator.jobs import ReplicatorContext, Wanted

    target = "eu-west-1"
    await cluster.stop_node(target)  # nothing else copies to it meanwhile
    ups = [await cluster.upload(make_jpeg(320, 240, seed=40 + i), client_ip="3.0.1.10") for i in range(5)]
    for up in ups:
        await cluster.wait_ready(up["image_id"])
    deleted, damaged, good = ups[0], ups[1], ups[2:]
    status, _ = await cluster.api("DELETE", f"/v1/images/{deleted['image_id']}")
    assert status == 202
    intact: dict[str, bytes] = {}
    for holder in ("us-east-1", "ap-southeast-1"):  # whichever peer it asks sends bytes that are not the record's
        path = cluster.store(holder).original_path(damaged["image_id"])
        data = intact[holder] = path.read_bytes()
        path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    settings = cluster.node_settings[target]
    store = cluster.store(target)
    try:
        async with open_pool(settings.database) as pool, aiohttp.ClientSession() as session:
            ctx = ReplicatorContext(settings, pool, store, session)
            wants = [Wanted(u["image_id"], u["sha256"], u["bytes"], "image/jpeg") for u in ups]
            done = await copy_batch(ctx, wants)
    finally:
        for holder, data in intact.items():
            cluster.store(holder).original_path(damaged["image_id"]).write_bytes(data)
    assert done == {deleted["image_id"], *(u["image_id"] for u in good)}
    assert ctx.batched == ctx.copied == len(good)
    for up in good:
        assert cluster.disk_sha256(target, up["image_id"]) == up["sha256"]
        assert (await cluster.replicas(up["image_id"]))[target] == "ok"
        assert store.meta(up["image_id"]) is not None
    assert cluster.disk_sha256(target, deleted["image_id"]) is None
    assert cluster.disk_sha256(target, damaged["image_id"]) is None
    assert (await cluster.replicas(damaged["image_id"]))[target] == "pending"
    assert cluster.files_under(target, "tmp") == []
    await cluster.start_node(target)
    await cluster.wait_replicated(damaged["image_id"])  # then the single-image job copies it, good bytes now
    assert cluster.disk_sha256(target, damaged["image_id"]) == damaged["sha256"]


async def test_the_batch_endpoint_is_signed_and_offers_only_what_it_holds(cluster: TestCluster) -> None:
    import time

    from storage_node.objects.peer import batch_params, peer_params

    up = await cluster.upload(make_jpeg(seed=50), client_ip="3.0.1.10")
    await cluster.wait_replicated(up["image_id"])
    settings = cluster.node_settings["us-east-1"]
    key, kid, exp = settings.signing_key("k1"), "k1", int(time.time()) + 60
    assert key is not None
    unknown = "a" * 22
    url = f"{settings.node.base_url}/peer/objects"
    assert cluster.session is not None
    params = batch_params(key, kid, [unknown, up["image_id"]], "eu-west-1", exp)
    async with cluster.session.get(url, params=params) as resp:
        assert resp.status == 200
        body = await resp.read()
    first, rest = body.split(b"\n", 1)
    assert json.loads(first) == {"image_id": unknown, "found": False}
    head, data = rest.split(b"\n", 1)
    assert json.loads(head) == {
        "image_id": up["image_id"],
        "bytes": up["bytes"],
        "sha256": up["sha256"],
        "private": False,
    }
    assert hashlib.sha256(data).hexdigest() == up["sha256"]
    tampered = {**params, "ids": up["image_id"]}  # another id list than the signed one
    single = {"ids": up["image_id"], **peer_params(key, kid, up["image_id"], "eu-west-1", exp)}  # another scope
    for bad in (tampered, single):
        async with cluster.session.get(url, params=bad) as resp:
            assert resp.status == 403, bad
    async with cluster.session.get(url, params={**params, "ids": "x,y"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_request"
