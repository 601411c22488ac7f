"""Geo: GeoIP2 City lookups and great-circle distance."""

from __future__ import annotations

import functools
import ipaddress
import math
from dataclasses import dataclass
from pathlib import Path

import geoip2.database
import geoip2.errors

EARTH_RADIUS_KM = 6371.0088
LOCATE_CACHE_SIZE = 16_384  # addresses whose position is kept: a lookup's GeoIP read costs more than the rest of it


@dataclass(frozen=True)
class Point:
    lat: float
    lon: float


def haversine_km(a: Point, b: Point) -> float:
    lat1, lat2 = math.radians(a.lat), math.radians(b.lat)
    dlat = lat2 - lat1
    dlon = math.radians(b.lon - a.lon)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def default_geoip_path() -> str:
    """The GeoLite2 City file shipped by the ``maxminddb-geolite2`` package."""
    import _maxminddb_geolite2  # type: ignore[import-untyped]

    return str(Path(_maxminddb_geolite2.__file__).parent / "GeoLite2-City.mmdb")


class GeoLocator:
    """Maps an IP to a Point; unknown, private or malformed addresses get the configured default."""

    def __init__(self, db_path: str, default: Point) -> None:
        self._reader = geoip2.database.Reader(db_path or default_geoip_path())
        self.default = default
        self._cached = functools.lru_cache(maxsize=LOCATE_CACHE_SIZE)(self._locate)

    def locate(self, ip: str | None) -> Point:
        """Where ``ip`` is (the default when unknown); from memory for an address seen recently."""
        return self._cached(ip) if ip else self.default

    def _locate(self, ip: str) -> Point:
        try:
            ipaddress.ip_address(ip)
            rec = self._reader.city(ip)
        except (ValueError, geoip2.errors.AddressNotFoundError):
            return self.default
        if rec.location.latitude is None or rec.location.longitude is None:
            return self.default
        return Point(rec.location.latitude, rec.location.longitude)

    def close(self) -> None:
        self._reader.close()


# The regions of the dev cluster (docs/architecture.md): name -> where its nodes stand.
REGIONS: dict[str, Point] = {
    "us-east": Point(39.0, -77.5),
    "us-west": Point(45.6, -121.2),
    "eu-west": Point(53.3, -6.3),
    "ap-southeast": Point(1.35, 103.8),
}
