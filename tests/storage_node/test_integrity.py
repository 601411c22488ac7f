"""A node's copies against their record while Postgres is unreachable (storage_node.integrity): a lost sidecar is
not restored from the bytes but makes the copy unavailable (503 no_good_copy), and a copy found damaged is
refused, stripped of its variants, counted and logged at once, whatever the database does. The pool is a real
psycopg pool aimed at a port nothing listens on; the paths with a live database are in
tests/integration/test_integrity.py."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
from psycopg_pool import AsyncConnectionPool

from common.db.rows import Pool
from common.errors import Unavailable
from common.metrics import HttpMetrics, NodeMetrics
from common.procs import free_port
from storage_node.integrity import Integrity
from storage_node.objects.store import ORIGINAL, ObjectMeta, Store
from storage_node.objects.verify import OriginalMismatch

IMAGE_ID = "abcdefghijklmnopqrstuv"
NODE_ID = "eu-west-1"


@pytest.fixture
async def unreachable() -> AsyncIterator[Pool]:
    pool: AsyncConnectionPool = AsyncConnectionPool(
        f"postgresql://minicdn@127.0.0.1:{free_port()}/minicdn?connect_timeout=1", min_size=0, max_size=1, open=False
    )
    await pool.open(wait=False)
    try:
        yield cast(Pool, pool)
    finally:
        await pool.close()


def stored(tmp_path: Path) -> tuple[Store, ObjectMeta]:
    store = Store(tmp_path)
    store.prepare()
    data = b"\xff\xd8\xff" + bytes(range(256)) * 8
    record = ObjectMeta(hashlib.sha256(data).hexdigest(), "image/jpeg", len(data))
    tmp = store.new_tmp_path()
    tmp.write_bytes(data)
    store.commit_original(tmp, IMAGE_ID, record)
    return store, record


async def test_a_lost_sidecar_without_postgres_is_unavailable_never_rebuilt(tmp_path: Path, unreachable: Pool) -> None:
    store, _record = stored(tmp_path)
    sidecar = store.path_for(IMAGE_ID, "meta.json")
    sidecar.unlink()
    fresh = Store(tmp_path)  # as after a restart: nothing in memory
    integrity = Integrity(fresh, unreachable, NODE_ID, record_timeout_s=0.5)
    with pytest.raises(Unavailable) as caught:
        await integrity.meta(IMAGE_ID)
    assert caught.value.code == "no_good_copy" and caught.value.status == 503
    assert caught.value.headers == {"Retry-After": "1"}
    assert not sidecar.exists()  # nothing written from the bytes


async def test_a_damaged_copy_is_refused_at_once_even_when_postgres_cannot_record_it(
    tmp_path: Path, unreachable: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="storage_node.integrity")
    store, record = stored(tmp_path)
    variant = store.new_tmp_path()
    variant.write_bytes(b"v" * 50)
    store.commit(variant, IMAGE_ID, "w300.webp")
    metrics = NodeMetrics(HttpMetrics("storage-node"), NODE_ID)
    integrity = Integrity(store, unreachable, NODE_ID, metrics, record_timeout_s=0.5)
    assert not await integrity.refused(IMAGE_ID)
    store.path_for(IMAGE_ID, ORIGINAL).write_bytes(b"\xff\xd8\xff")
    mismatch = OriginalMismatch("size", f"{record.bytes} bytes", "3 bytes")
    await integrity.found(IMAGE_ID, "serve", mismatch)
    await integrity.found(IMAGE_ID, "serve", mismatch)  # the same finding again: counted and logged once
    assert await integrity.refused(IMAGE_ID) and store.cached_meta(IMAGE_ID) is None
    assert not store.path_for(IMAGE_ID, "w300.webp").exists()
    assert metrics.http.registry.get_sample_value("minicdn_corruptions_total", {"how": "serve"}) == 1
    logged = [r.getMessage() for r in caplog.records]
    found = [m for m in logged if m.startswith(f"corrupt copy: image {IMAGE_ID} on node {NODE_ID}, found by serve")]
    assert found == [
        f"corrupt copy: image {IMAGE_ID} on node {NODE_ID}, found by serve: size recorded "
        f"{record.bytes} bytes, found 3 bytes; 50 bytes of variants removed"
    ]
    assert any("`corrupt` not recorded yet" in m for m in logged)
