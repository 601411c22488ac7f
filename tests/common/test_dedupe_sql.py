"""The near-duplicate search: correct by the pigeonhole argument, and an index lookup, never a scan."""

from __future__ import annotations

import random

from common.config import DatabaseSettings, Secret
from common.db import pipeline as db_pipeline
from common.db.pool import open_pool


def test_chunks_and_neighbours() -> None:
    value = 0x0123_4567_89AB_CDEF
    assert db_pipeline.chunks(value) == [0x0123, 0x4567, 0x89AB, 0xCDEF]
    assert len(db_pipeline.neighbours(0x0F0F, 1)) == 17 and len(set(db_pipeline.neighbours(0, 2))) == 137
    assert db_pipeline.to_signed64(2**64 - 1) == -1 and db_pipeline.to_signed64(5) == 5


async def test_near_duplicates_found_through_the_chunk_indexes(database_url: str) -> None:
    rng = random.Random(3)
    async with open_pool(DatabaseSettings(url=Secret(database_url))) as pool:
        async with pool.connection() as conn:
            await conn.execute("INSERT INTO sets (set_id) VALUES ('s')")
            await conn.execute(
                "INSERT INTO nodes (node_id, region, set_id, base_url, lat, lon)"
                " VALUES ('n', 'r', 's', 'http://n', 0, 0)"
            )
            rows: list[tuple[str, int, *tuple[int, ...]]] = []  # image_id, phash, its four chunks
            for i in range(20_000):
                h = rng.getrandbits(64)
                rows.append((f"img{i:06d}", db_pipeline.to_signed64(h), *db_pipeline.chunks(h)))
            target = rows[123]
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO images (image_id, status, max_bytes, set_id, origin_node, phash, ph0, ph1, ph2,"
                    " ph3, uploaded_at) VALUES (%s, 'ready', 1, 's', 'n', %s, %s, %s, %s, %s, now())",
                    rows,
                )
            await conn.execute("ANALYZE images")
        base = target[1] % 2**64
        for flips, found in ((0, True), (6, True), (7, False)):
            bits = random.Random(flips).sample(range(64), flips)
            probe = base
            for bit in bits:
                probe ^= 1 << bit
            got = await db_pipeline.near_duplicate(pool, probe, 6, None, "new")
            assert (got == target[0]) is found, (flips, got)
        async with pool.connection() as conn:
            cur = await conn.execute("EXPLAIN " + db_pipeline.NEAR_SQL, db_pipeline.near_args(base, 6, None, "new"))
            plan = "\n".join(row["QUERY PLAN"] for row in await cur.fetchall())
    assert "Seq Scan" not in plan and all(f"images_ph{i}" in plan for i in range(4)), plan
