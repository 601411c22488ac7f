"""Image search at scale: 1,000,000 images in the real Postgres, and every typical search (each filter alone
and in combination, an app's own images, newest or oldest first, a deep keyset page) is planned with
indexes only: no Seq Scan on images in the plan Postgres runs for the values given (EXPLAIN ANALYZE; the
search never uses prepared statements, so that is the plan every request gets). Prints each query's
p50/p99 latency through the service's own code path (figures only: timings are never asserted).

Bounded: the rows are generated inside the database (generate_series), the search indexes are dropped
for the load and rebuilt afterwards from migration 007's own SQL (a bulk build is far cheaper than
maintaining ten indexes row by row). About a minute on a 2-core machine; run with `-s` to see the figures.
"""

from __future__ import annotations

import re
import statistics
import time
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

from common.config import DatabaseSettings, Secret
from common.db import search as db_search
from common.db.pool import open_pool
from common.db.rows import Conn
from common.db.search import ImageFilter, Position

ROWS = 1_000_000
APPS = 20
BIG_APP = "a0000000"  # 30% of the rows
SMALL_APP = "a0000007"  # about 3.7%
T0 = datetime(2026, 1, 1, tzinfo=UTC)  # the first creation time in LOAD
RUNS = 25

SEARCH_SQL = (resources.files("common.db") / "migrations" / "007_search.sql").read_text()
SEARCH_INDEXES = re.findall(r"CREATE INDEX (\w+)", SEARCH_SQL)

# Bulk load in one statement per table; triggers and foreign-key checks off for it (replica role), since
# every referenced row is inserted here and the per-row trigger only fills app_id, which is given.
LOAD = [
    "SET session_replication_role = replica",
    "INSERT INTO sets (set_id) VALUES ('s')",
    "INSERT INTO nodes (node_id, region, set_id, base_url, lat, lon) VALUES ('n', 'us-east', 's', 'http://n', 0, 0)",
    "INSERT INTO apps (app_id, name) SELECT 'a' || lpad(a::text, 7, '0'), 'app ' || a"
    f" FROM generate_series(0, {APPS - 1}) a",
    "INSERT INTO api_keys (key_id, key_hash, name, scopes, app_id)"
    " SELECT 'k' || lpad(a::text, 7, '0'), sha256(a::text::bytea), 'key ' || a, '{app}', 'a' || lpad(a::text, 7, '0')"
    f" FROM generate_series(0, {APPS - 1}) a",
    # h: a deterministic pseudo-random number per row; its digits decide the columns independently.
    # Statuses 90% ready, 4% quarantined, 3% deleted, 3% requested; 20% private; formats weighted to jpeg;
    # widths and heights 100..5999; 90% of images have a common tag (c0..c7) and a rare one (t0..t999);
    # metadata {"user": 0..9999, "kind": avatar|post|banner}; two images per creation time (ties).
    "INSERT INTO images (image_id, owner_key_id, app_id, status, visibility, format, width, height, max_bytes,"
    " set_id, origin_node, tags, metadata, created_at, ready_at)"
    " SELECT 'i' || lpad(g::text, 21, '0'), 'k' || lpad(app::text, 7, '0'), 'a' || lpad(app::text, 7, '0'),"
    "  CASE WHEN h % 100 < 90 THEN 'ready' WHEN h % 100 < 94 THEN 'quarantined' WHEN h % 100 < 97 THEN 'deleted'"
    "   ELSE 'requested' END,"
    "  CASE WHEN (h / 100) % 5 = 0 THEN 'private' ELSE 'public' END,"
    "  (ARRAY['jpeg','jpeg','jpeg','jpeg','jpeg','png','png','webp','webp','gif','avif','heic'])[1 + (h / 1000) % 12],"
    "  100 + (h / 20000) % 5900, 100 + (h / 200000000) % 5900, 1000000, 's', 'n',"
    "  CASE WHEN (h / 7) % 10 = 0 THEN '{}'::text[] ELSE ARRAY['c' || (h / 70) % 8, 't' || (h / 700) % 1000] END,"
    "  jsonb_build_object('user', (h / 13) % 10000, 'kind', (ARRAY['avatar','post','banner'])[1 + (h / 17) % 3]),"
    "  timestamptz '2026-01-01 00:00:00+00' + (g / 2) * interval '20 seconds',"
    "  CASE WHEN h % 100 < 90 THEN timestamptz '2026-01-01 00:00:00+00' + (g / 2) * interval '20 seconds'"
    "   + ((h / 3) % 60) * interval '1 second'"
    "  END"
    f" FROM generate_series(1, {ROWS}) g,"
    "  LATERAL (SELECT abs(hashint8extended(g, 42)) AS h) r,"
    "  LATERAL (SELECT CASE WHEN r.h % 10 < 3 THEN 0 ELSE 1 + (r.h / 10) % 19 END AS app) a",
    "SET session_replication_role = DEFAULT",
]


def queries(deep: Position) -> dict[str, ImageFilter]:
    """The typical searches: an app's own images, each filter alone, a few combinations, both orders."""
    day = T0 + timedelta(days=50)
    big = BIG_APP
    return {
        "own, newest": ImageFilter(big),
        "own, oldest": ImageFilter(big, newest_first=False),
        "own, deep keyset page": ImageFilter(big, after=deep),
        "tags (common)": ImageFilter(big, tags_all=("c3",)),
        "tags (rare)": ImageFilter(big, tags_all=("t42",)),
        "tags all of two": ImageFilter(big, tags_all=("c3", "t43")),
        "any_tags": ImageFilter(big, tags_any=("t1", "t2", "t3")),
        "format (common)": ImageFilter(big, formats=("png",)),
        "format (rare)": ImageFilter(big, formats=("heic",)),
        "min_width": ImageFilter(big, min_width=5500),
        "width range": ImageFilter(big, min_width=1000, max_width=1010),
        "height range": ImageFilter(big, min_height=3000, max_height=3005),
        "created range (1 day)": ImageFilter(big, created_after=day, created_before=day + timedelta(days=1)),
        "ready range (1 hour)": ImageFilter(big, ready_after=day, ready_before=day + timedelta(hours=1)),
        "status quarantined": ImageFilter(big, statuses=("quarantined",)),
        "visibility private": ImageFilter(big, visibility="private"),
        "meta user": ImageFilter(big, metadata=(("user", ("42", 42)),)),
        "meta kind, oldest": ImageFilter(big, metadata=(("kind", ("banner",)),), newest_first=False),
        "tags + format + min_width": ImageFilter(big, tags_all=("c1",), formats=("png",), min_width=3000),
        "private + meta + created range": ImageFilter(
            big,
            visibility="private",
            metadata=(("kind", ("post",)),),
            created_after=day,
            created_before=day + timedelta(days=7),
        ),
        "small app, newest, limit 1000": ImageFilter(SMALL_APP, limit=1000),
        "small app, rare tag + ready": ImageFilter(SMALL_APP, tags_all=("t7",), statuses=("ready",)),
    }


def seq_scans_on_images(node: dict[str, Any]) -> list[str]:
    found = [node["Node Type"]] if node["Node Type"] == "Seq Scan" and node.get("Relation Name") == "images" else []
    for child in node.get("Plans", []):
        found += seq_scans_on_images(child)
    return found


def indexes_used(node: dict[str, Any]) -> set[str]:
    found = {node["Index Name"]} if "Index Name" in node else set()
    for child in node.get("Plans", []):
        found |= indexes_used(child)
    return found


async def load(conn: Conn) -> tuple[float, float]:
    """Seconds spent inserting the rows, and building the search indexes (and ANALYZE)."""
    started = time.perf_counter()
    for name in SEARCH_INDEXES:
        await conn.execute(f"DROP INDEX {name}")
    for statement in LOAD:
        await conn.execute(statement)
    inserted = time.perf_counter()
    await conn.execute("SET maintenance_work_mem = '256MB'")
    await conn.execute(SEARCH_SQL)
    await conn.execute("ANALYZE images")
    return inserted - started, time.perf_counter() - inserted


async def test_every_typical_search_uses_indexes_on_a_million_rows(database_url: str) -> None:
    started = time.perf_counter()
    async with open_pool(DatabaseSettings(url=Secret(database_url), pool_min=1, pool_max=2)) as pool:
        async with pool.connection() as conn:
            insert_s, index_s = await load(conn)
            cur = await conn.execute(
                "SELECT count(*) AS n, count(*) FILTER (WHERE app_id = %s) AS big FROM images", (BIG_APP,)
            )
            counts = await cur.fetchone()
            assert counts is not None and counts["n"] == ROWS and counts["big"] > ROWS // 4, counts
            cur = await conn.execute(
                "SELECT created_at, image_id FROM images WHERE app_id = %s AND status <> 'deleted'"
                " ORDER BY created_at DESC, image_id DESC OFFSET 150000 LIMIT 1",
                (BIG_APP,),
            )
            row = await cur.fetchone()
            assert row is not None
            deep = Position(row["created_at"], row["image_id"])
            plans: dict[str, tuple[list[str], set[str], int]] = {}
            for label, f in queries(deep).items():
                query, params = db_search.build(f)
                cur = await conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + query, params)
                analysed = (await cur.fetchone() or {})["QUERY PLAN"][0]
                scans = seq_scans_on_images(analysed["Plan"])
                plans[label] = (scans, indexes_used(analysed["Plan"]), analysed["Plan"]["Actual Rows"])
        # Latency through the service's code path (pool, typed rows; psycopg prepares repeated statements).
        figures: dict[str, tuple[float, float, int]] = {}
        for label, f in queries(deep).items():
            times = []
            for _ in range(RUNS):
                t = time.perf_counter()
                page = await db_search.search_images(pool, f)
                times.append((time.perf_counter() - t) * 1000)
            cuts = statistics.quantiles(times, n=100, method="inclusive")
            figures[label] = (cuts[49], cuts[98], len(page.images))
    print(
        f"\n{ROWS:,} images, {APPS} apps ({BIG_APP}: {counts['big']:,}); inserted in {insert_s:.1f} s,"
        f" search indexes built in {index_s:.1f} s, whole test {time.perf_counter() - started:.1f} s"
    )
    print(f"{'query':34} {'rows':>5} {'p50 ms':>8} {'p99 ms':>8}  indexes")
    for label, (p50, p99, n) in figures.items():
        print(f"{label:34} {n:>5} {p50:>8.2f} {p99:>8.2f}  {', '.join(sorted(plans[label][1]))}")
    offenders = {label: p[0] for label, p in plans.items() if p[0]}
    assert not offenders, f"sequential scans on images: {offenders}"
    # Each search found what it looks for (a plan over an empty result would prove little).
    assert all(n > 0 for _p50, _p99, n in figures.values()), figures
    assert all(plans[label][1] for label in plans), plans
