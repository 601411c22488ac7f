"""Scrubbing: flipped bytes in a stored original are detected and replaced from a good copy."""

from __future__ import annotations

from prometheus_client import generate_latest

from storage_node import keys as node_keys
from storage_node.objects.store import ORIGINAL
from tests.cluster import TestCluster, make_jpeg


async def test_flipped_bytes_are_detected_and_repaired_from_a_good_copy(cluster: TestCluster) -> None:
    from replicator.node_root import SCRUBBER

    up = await cluster.upload(make_jpeg(seed=31), client_ip="3.0.1.10")
    other = await cluster.upload(make_jpeg(seed=32), client_ip="3.0.1.10")
    for i in (up, other):
        await cluster.wait_replicated(i["image_id"])
        await cluster.wait_ready(i["image_id"])  # processing settled: nothing else touches the files
    victim = "eu-west-1"
    # A peer's copy is bad too: the repair must skip it and take the copy matching the recorded hash.
    bad_peer = "us-east-1"
    for node_id in (victim, bad_peer):
        path = cluster.store(node_id).path_for(up["image_id"], ORIGINAL)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte, same size: only a re-hash can tell
        path.write_bytes(bytes(data))
    assert cluster.disk_sha256(victim, up["image_id"]) != up["sha256"]

    scrubber = cluster.apps[victim][SCRUBBER]
    result = await scrubber.run_pass()
    assert result.checked == 2 and result.corrupt == 1 and result.repaired == 1
    assert cluster.disk_sha256(victim, up["image_id"]) == up["sha256"]
    assert cluster.disk_sha256(victim, other["image_id"]) == other["sha256"]  # the good one untouched
    assert (await cluster.replicas(up["image_id"]))[victim] == "ok"
    metrics = generate_latest(cluster.apps[victim][node_keys.METRICS].http.registry).decode()
    assert "minicdn_scrub_corruptions_total 1.0" in metrics

    # The bad peer finds its own corruption and repairs from a good copy (the victim's, now fixed, or ap-southeast).
    result = await cluster.apps[bad_peer][SCRUBBER].run_pass()
    assert result.corrupt == 1 and result.repaired == 1
    assert cluster.disk_sha256(bad_peer, up["image_id"]) == up["sha256"]
    again = await scrubber.run_pass()
    assert again.corrupt == 0 and again.checked == 2
