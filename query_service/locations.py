"""Where an image's `ok` replicas are, for URL lookups: one indexed Postgres query, or none when cached.

Only images whose every replica is `ok` are cached: replication can then only add nothing, so the
entry stays true until the image is deleted or a replica is lost, which call ``invalidate``. A
partly replicated image is always read fresh, so a new replica is used as soon as it is `ok`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from common.db import images as db_images
from common.db.rows import Pool


@dataclass(frozen=True)
class Location:
    status: str
    visibility: str
    owner_key_id: str | None
    width: int | None
    height: int | None
    ok_nodes: tuple[str, ...]


class LocationCache:
    def __init__(self, pool: Pool, max_entries: int) -> None:
        self.pool = pool
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Location] = OrderedDict()
        self.hits = 0
        self.misses = 0

    async def get(self, image_id: str) -> Location | None:
        cached = self._entries.get(image_id)
        if cached is not None:
            self._entries.move_to_end(image_id)
            self.hits += 1
            return cached
        self.misses += 1
        row = await db_images.get_locations(self.pool, image_id)
        if row is None:
            return None
        loc = Location(
            row["status"], row["visibility"], row["owner_key_id"], row["width"], row["height"], tuple(row["ok_nodes"])
        )
        if row["not_ok"] == 0 and loc.ok_nodes and loc.status == "ready":
            self._entries[image_id] = loc
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return loc

    def invalidate(self, image_id: str) -> None:
        self._entries.pop(image_id, None)
