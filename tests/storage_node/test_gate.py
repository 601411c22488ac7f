"""The serve gate while Postgres is unreachable (storage_node.gate): an image another process of this node has
noted `ready` since this process started is served without the database; a marker older than the process (it
may predate a delete the node missed while down) or none at all still needs Postgres. The pool is a real psycopg
pool aimed at a port nothing listens on."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from common.db.rows import Pool
from common.procs import free_port
from storage_node.gate import ServeGate
from storage_node.objects.store import READY_MARKER, Store

IMAGE_ID = "abcdefghijklmnopqrstuv"


@pytest.fixture
async def unreachable() -> AsyncIterator[Pool]:
    pool: AsyncConnectionPool = AsyncConnectionPool(
        f"postgresql://minicdn@127.0.0.1:{free_port()}/minicdn?connect_timeout=1",
        min_size=0,
        max_size=1,
        open=False,
        timeout=0.5,
    )
    await pool.open(wait=False)
    try:
        yield cast(Pool, pool)
    finally:
        await pool.close()


def image_folder(tmp_path: Path) -> Store:
    store = Store(tmp_path)
    store.prepare()
    store.image_dir(IMAGE_ID).mkdir(parents=True)
    return store


async def test_a_ready_marker_from_another_process_serves_without_postgres(tmp_path: Path, unreachable: Pool) -> None:
    store = image_folder(tmp_path)
    gate = ServeGate(unreachable, store)
    with pytest.raises(psycopg.OperationalError):  # not known here yet: only Postgres can tell
        await gate.check(IMAGE_ID)
    store.mark_ready(IMAGE_ID)  # e.g. the primary finished processing it
    await gate.check(IMAGE_ID)
    assert gate.is_ready(IMAGE_ID)


async def test_a_marker_older_than_the_process_is_not_trusted(tmp_path: Path, unreachable: Pool) -> None:
    store = image_folder(tmp_path)
    store.mark_ready(IMAGE_ID)
    old = time.time() - 60
    os.utime(store.image_dir(IMAGE_ID) / READY_MARKER, (old, old))  # written before a restart
    gate = ServeGate(unreachable, store)
    with pytest.raises(psycopg.OperationalError):
        await gate.check(IMAGE_ID)
    assert not gate.is_ready(IMAGE_ID)


async def test_a_deleted_folder_takes_no_marker(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.prepare()
    store.mark_ready(IMAGE_ID)  # removed meanwhile: nothing recreated
    assert store.ready_marked_at(IMAGE_ID) is None
    assert not store.image_dir(IMAGE_ID).exists()
