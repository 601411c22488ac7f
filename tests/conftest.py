"""Session fixtures: the embedded Postgres and NATS (real servers on free ports in temp dirs), a GeoIP
database built with mmdb-writer, and a factory for in-process three-region clusters."""

from __future__ import annotations

import secrets

# Up front: pytest reports an object that failed in __del__ through a hook that imports tracemalloc lazily; a garbage
# collection during that very import found the module half made and failed the test that happened to be running.
import tracemalloc  # noqa: F401
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from minicdn.embedded import EmbeddedNats, EmbeddedPostgres
from tests.cluster import REGION_IPS, MakeCluster, TestCluster

TESTDATA = Path(__file__).resolve().parent / "images"  # copied from shared/testdata (see its README)


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path_factory.mktemp("nats")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def geoip_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Known ranges per region (see tests.cluster.REGION_IPS); everything else is unknown."""
    from common.geo import REGIONS

    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type="GeoIP2-City",
        languages=["en"],
        description={"en": "minicdn test ranges"},
    )
    for region, (network, _sample) in REGION_IPS.items():
        point = REGIONS[region]
        writer.insert_network(IPSet([network]), {"location": {"latitude": point.lat, "longitude": point.lon}})
    path = tmp_path_factory.mktemp("geoip") / "test-city.mmdb"
    writer.to_db_file(str(path))
    return str(path)


@pytest.fixture
def database_url(pg: EmbeddedPostgres) -> str:
    """A fresh database per test: tests never see each other's rows."""
    return pg.create_database(f"t_{secrets.token_hex(6)}")


@pytest.fixture
async def cluster(
    tmp_path: Path, database_url: str, nats_server: EmbeddedNats, geoip_db: str
) -> AsyncIterator[TestCluster]:
    c = TestCluster(tmp_path, database_url, nats_server.url, geoip_db)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


@pytest.fixture
async def make_cluster(
    tmp_path: Path, database_url: str, nats_server: EmbeddedNats, geoip_db: str
) -> AsyncIterator[MakeCluster]:
    """A cluster whose settings the test adds to (one per test: each test has its own database)."""
    started: list[TestCluster] = []

    async def make(node_capacity_bytes: int = 0, **sections: dict[str, Any]) -> TestCluster:
        c = TestCluster(tmp_path / "cluster", database_url, nats_server.url, geoip_db, node_capacity_bytes)
        for name, values in sections.items():
            c.common.setdefault(name, {}).update(values)
        started.append(c)
        await c.start()
        return c

    try:
        yield make
    finally:
        for c in started:
            await c.stop()


@pytest.fixture
def testdata() -> Path:
    assert TESTDATA.is_dir(), f"test images expected at {TESTDATA}"
    return TESTDATA
