from __future__ import annotations

import pytest

from common.geo import REGIONS, GeoLocator, Point, haversine_km


@pytest.mark.parametrize(
    ("a", "b", "km"),
    [
        (Point(0, 0), Point(0, 90), 10007.5),  # a quarter of the equator
        (Point(0, 0), Point(90, 0), 10007.5),  # equator to pole
        (Point(0, 0), Point(0, 180), 20015.1),  # antipodes
        (Point(10, 170), Point(10, -170), 2190.2),  # across the date line, not around the world
    ],
)
def test_haversine_references(a: Point, b: Point, km: float) -> None:
    assert haversine_km(a, b) == pytest.approx(km, rel=0.001)
    assert haversine_km(a, a) == 0


def test_region_order_from_dublin() -> None:
    dublin = REGIONS["eu-west"]
    assert haversine_km(dublin, REGIONS["us-east"]) < haversine_km(dublin, REGIONS["ap-southeast"])


def test_locator_known_unknown_private_and_malformed(geoip_db: str) -> None:
    default = Point(1.0, 2.0)
    geo = GeoLocator(geoip_db, default)
    try:
        assert geo.locate("52.16.9.9") == REGIONS["eu-west"]
        for ip in ("8.8.8.8", "10.1.2.3", "127.0.0.1", "::1", "not-an-ip", "", None):
            assert geo.locate(ip) == default
    finally:
        geo.close()


def test_packaged_geolite_database_loads() -> None:
    geo = GeoLocator("", Point(0, 0))
    try:
        assert geo.locate("127.0.0.1") == Point(0, 0)
    finally:
        geo.close()
