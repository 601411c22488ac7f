"""Where an image's verified (`ok`) replicas are, and what a URL lookup must know of it (status, visibility,
owner and app, size): in memory, for every image looked up recently.

- First sight: one indexed Postgres query (``common.db.images.locations_of``); an unknown id is remembered
  as absent for ``query.reconcile_s``.
- Then the events every process receives (``query_service.watch``) change the entry in place, without a
  query: `uploaded` (the origin's replica), `replica_ok` (a new holder: handed out at once), `processed`
  (`ready` or `quarantined`, with the final size), `rejected` and `deleted` (no holder any more).
- A reconcile every ``query.reconcile_s`` re-reads the known entries in batches: a lost event, or a change
  no event announces (a replica lost, a ticket expired, a row removed), is stale at most that long.

A status only moves forward (``advance``): an event arriving late cannot undo a later one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace

from common.db import images as db_images
from common.db.rows import Pool
from query_service.memtable import MemTable

# How far along its life an image is: an event may move it forward (or sideways: an approval makes a
# quarantined image ready), never back.
_STAGE = {
    "requested": 0,
    "expired": 0,
    "uploaded": 1,
    "processing": 2,
    "ready": 3,
    "quarantined": 3,
    "rejected": 4,
    "deleted": 5,
}
GONE = ("rejected", "deleted")


@dataclass(frozen=True, slots=True)
class Location:
    status: str
    visibility: str
    owner_key_id: str | None
    app_id: str | None
    width: int | None
    height: int | None
    ok_nodes: tuple[str, ...]


Change = Callable[[Location], Location]
LocationCache = MemTable[str, Location]


def location_cache(pool: Pool, max_entries: int, absent_ttl_s: float) -> LocationCache:
    async def load(image_ids: list[str]) -> dict[str, Location]:
        rows = await db_images.locations_of(pool, image_ids)
        # Interned: the few distinct statuses and node ids are shared by every entry, not copied into each.
        return {
            r["image_id"]: Location(
                sys.intern(r["status"]),
                sys.intern(r["visibility"]),
                r["owner_key_id"],
                r["app_id"],
                r["width"],
                r["height"],
                tuple(sys.intern(n) for n in r["ok_nodes"]),
            )
            for r in rows
        }

    return MemTable("locations", load, max_entries, absent_ttl_s)


def advance(current: str, new: str) -> str:
    return new if _STAGE.get(new, 0) >= _STAGE.get(current, 0) else current


def _with_node(nodes: tuple[str, ...], node_id: str) -> tuple[str, ...]:
    return nodes if node_id in nodes else (*nodes, node_id)


def uploaded(origin_node: str) -> Change:
    """The original is durable on its origin node (its replica `ok`)."""

    def change(loc: Location) -> Location:
        if loc.status in GONE:
            return loc
        return replace(loc, status=advance(loc.status, "uploaded"), ok_nodes=_with_node(loc.ok_nodes, origin_node))

    return change


def replica_ok(node_id: str) -> Change:
    """``node_id`` holds a verified copy now."""

    def change(loc: Location) -> Location:
        return loc if loc.status in GONE else replace(loc, ok_nodes=_with_node(loc.ok_nodes, node_id))

    return change


def processed(status: str, width: int | None, height: int | None) -> Change:
    """Processing (or an approval) settled the image: `ready` or `quarantined`, with its final size."""

    def change(loc: Location) -> Location:
        return replace(
            loc,
            status=advance(loc.status, status),
            width=loc.width if width is None else width,
            height=loc.height if height is None else height,
        )

    return change


def gone(status: str) -> Change:
    """`rejected` or `deleted`: its replica rows are gone with it, so no holder is handed out."""

    def change(loc: Location) -> Location:
        return replace(loc, status=advance(loc.status, status), ok_nodes=())

    return change
