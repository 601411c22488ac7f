"""`minicdn bench --pipeline` runs end to end (on small pictures), reports every figure and deletes its uploads."""

from __future__ import annotations

import io

from rich.console import Console

from minicdn.bench.pipeline import run_pipeline_bench
from minicdn.client import ClusterRef
from tests.cluster import TestCluster


async def test_pipeline_bench_reports_every_figure(cluster: TestCluster) -> None:
    out = io.StringIO()
    fig = await run_pipeline_bench(
        ClusterRef(cluster.query_url, cluster.api_key),
        images=2,
        stored_gets=20,
        console=Console(file=out, width=200),
        photo_size=(480, 360),
        big_size=(1200, 1000),
    )
    for key in ("fresh_webp_per_s", "pyvips_loop_per_s", "stored_per_s", "lazy_first_ms", "avif_ms", "peak_rss_mb"):
        assert fig.values[key] > 0, key
    text = out.getvalue()
    assert "fresh 1200 px WebP builds" in text and "peak RSS" in text
    # 2 + 4 small JPEGs and the big one, all deleted at the end (no `keep`).
    assert len(fig.uploaded) == 7 and fig.removed == 7
    status, body = await cluster.api("GET", "/v1/images")
    assert status == 200 and body["images"] == [], body
