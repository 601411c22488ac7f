"""Choose where to copy an original from: healthy members holding an `ok` replica, nearest first."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from common.geo import Point, haversine_km


@dataclass(frozen=True)
class Peer:
    node_id: str
    base_url: str
    distance_km: float


async def sources(
    pool: AsyncConnectionPool, image_id: str, me: str, here: Point, heartbeat_timeout_s: float
) -> list[Peer]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT n.node_id, n.base_url, n.lat, n.lon FROM replicas r JOIN nodes n USING (node_id)"
            " WHERE r.image_id = %s AND r.state = 'ok' AND n.node_id <> %s AND n.state <> 'dead'"
            " AND n.last_heartbeat > now() - make_interval(secs => %s)",
            (image_id, me, heartbeat_timeout_s),
        )
        rows = await cur.fetchall()
    peers = [Peer(r["node_id"], r["base_url"], haversine_km(here, Point(r["lat"], r["lon"]))) for r in rows]
    return sorted(peers, key=lambda p: p.distance_km)
