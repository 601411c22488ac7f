"""A bounded in-memory table of rows read from Postgres, for the lookups that must not wait on it.

A row is read once, on its first sight (concurrent first sights of one key share that read), and from then
on answered from memory: the hot path is a dict lookup. Events change known rows in place (``apply``,
``drop``; a first sight in flight when its row changed reads again, one whose row is gone stores nothing);
``refresh`` re-reads known rows in batches in the background (the reconcile), repairing what a
lost event left stale. A change applied while a refresh's read is in flight wins over that read: every
change stamps its row with a sequence number, and a refresh only overwrites rows stamped before it read.

A key Postgres does not know is remembered as absent for ``absent_ttl_s`` (so a flood of unknown keys costs
one read each per period, not one per request). Memory is bounded: at most ``max_entries`` rows and as many
absent keys, least recently used dropped first.

No aiohttp and no SQL here: the loader is a function of a batch of keys (``common.db``'s queries).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
Loader = Callable[[list[K]], Awaitable[dict[K, V]]]
REFRESH_BATCH = 500  # keys per query of a refresh: one short indexed read each, the loop runs in between


class MemTable(Generic[K, V]):
    def __init__(
        self,
        name: str,
        load: Loader[K, V],
        max_entries: int,
        absent_ttl_s: float,
        *,
        valid: Callable[[V], bool] | None = None,
    ) -> None:
        self.name = name
        self._load = load
        self.max_entries = max_entries
        self.absent_ttl_s = absent_ttl_s
        self._valid = valid  # a loaded row failing it counts as absent (a key revoked while it was being read)
        self._rows: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._absent: OrderedDict[K, float] = OrderedDict()  # key -> time.monotonic() it was found missing
        self._loading: dict[K, asyncio.Task[V | None]] = {}
        # Changes that arrived during a first-sight read (None: the row was dropped meanwhile).
        self._pending: dict[K, list[Callable[[V], V] | None]] = {}
        self._stale: set[K] = set()  # first sights whose read may predate a change: they read again
        self._seq = 0
        self.hits = 0
        self.loads = 0  # first-sight reads of Postgres (a refresh is not counted)

    def __len__(self) -> int:
        return len(self._rows)

    def keys(self) -> list[K]:
        return list(self._rows)

    def peek(self, key: K) -> V | None:
        """The row in memory, or None: never reads Postgres, does not count as a use."""
        hit = self._rows.get(key)
        return None if hit is None else hit[0]

    def known(self, key: K) -> V | None:
        """The row when it is in memory (a use, as ``get`` counts it), else None: never reads Postgres."""
        hit = self._rows.get(key)
        if hit is None:
            return None
        self._rows.move_to_end(key)
        self.hits += 1
        return hit[0]

    async def get(self, key: K) -> V | None:
        """The row (None when Postgres has none): from memory when known, else one read, shared by every
        concurrent caller. A failed read raises (psycopg's error: `503 database_unavailable` for a request)."""
        hit = self._rows.get(key)
        if hit is not None:
            self._rows.move_to_end(key)
            self.hits += 1
            return hit[0]
        missing_at = self._absent.get(key)
        if missing_at is not None:
            if time.monotonic() - missing_at < self.absent_ttl_s:
                self.hits += 1
                return None
            del self._absent[key]
        task = self._loading.get(key)
        if task is None:
            self._pending[key] = []
            task = self._loading[key] = asyncio.get_running_loop().create_task(self._first_sight(key))
            task.add_done_callback(_retrieved)
        # Shielded: a caller hanging up must not cancel the read the other callers wait for.
        return await asyncio.shield(task)

    async def _first_sight(self, key: K) -> V | None:
        try:
            self.loads += 1
            row = (await self._load([key])).get(key)
            # Changed while we read (and not gone since): what we read may predate the change.
            while key in self._stale and None not in self._pending[key]:
                self._stale.discard(key)
                self._pending[key] = []  # the next read includes them
                row = (await self._load([key])).get(key)
            changes = self._pending.get(key, [])
            if None in changes:
                return None  # dropped while we read (deleted, revoked): what we read is already stale
            if row is None or (self._valid is not None and not self._valid(row)):
                if not changes:  # an event for it while we read: it exists now, do not remember it absent
                    self._remember_absent(key)
                return None
            for change in changes:
                if change is not None:
                    row = change(row)
            self._store(key, row)
            return row
        finally:
            self._loading.pop(key, None)
            self._pending.pop(key, None)
            self._stale.discard(key)

    def put(self, key: K, row: V) -> None:
        """What this process knows first-hand (it just wrote it)."""
        self._absent.pop(key, None)
        self._store(key, row)

    def apply(self, key: K, change: Callable[[V], V]) -> None:
        """Change a known row in place (an event); a row being read for its first sight gets it once read.
        Unknown rows are left alone: their first sight reads the truth."""
        hit = self._rows.get(key)
        if hit is not None:
            self._seq += 1
            self._rows[key] = (change(hit[0]), self._seq)  # keeps its place in the LRU order
        elif key in self._pending:
            self._pending[key].append(change)
        else:
            self._absent.pop(key, None)  # something happened to it: it may exist now

    def drop(self, key: K, *, absent: bool = False) -> None:
        """Forget a row: it changed, its next use reads it again (a first sight in flight reads again); or,
        ``absent``, it is gone: answer None for it until ``absent_ttl_s`` passed, without reading (a first
        sight in flight stores nothing)."""
        self._rows.pop(key, None)
        if absent:
            self._remember_absent(key)
            if key in self._pending:
                self._pending[key].append(None)
        elif key in self._pending:
            self._stale.add(key)

    def drop_where(self, match: Callable[[V], bool], *, absent: bool = False) -> int:
        """Forget every row ``match`` selects (a scan: for rare events such as a revocation)."""
        found = [key for key, (row, _seq) in self._rows.items() if match(row)]
        for key in found:
            self.drop(key, absent=absent)
        return len(found)

    async def refresh(self, keys: list[K] | None = None, batch: int = REFRESH_BATCH) -> None:
        """Re-read ``keys`` (default: every known row) from Postgres in batches and store what changed; a row
        Postgres no longer has is dropped. Raises on the first failed batch (the rows stay as they were)."""
        wanted = self.keys() if keys is None else keys
        for start in range(0, len(wanted), batch):
            chunk = wanted[start : start + batch]
            read_at = self._seq
            fresh = await self._load(chunk)
            for key in chunk:
                hit = self._rows.get(key)
                if hit is None or hit[1] > read_at:
                    continue  # evicted or dropped meanwhile, or an event changed it after our read began
                row = fresh.get(key)
                if row is None or (self._valid is not None and not self._valid(row)):
                    self.drop(key, absent=True)
                elif row != hit[0]:
                    self._rows[key] = (row, hit[1])
        now = time.monotonic()
        while self._absent and now - next(iter(self._absent.values())) >= self.absent_ttl_s:
            self._absent.popitem(last=False)

    def _store(self, key: K, row: V) -> None:
        self._seq += 1
        self._rows[key] = (row, self._seq)
        self._rows.move_to_end(key)
        while len(self._rows) > self.max_entries:
            self._rows.popitem(last=False)

    def _remember_absent(self, key: K) -> None:
        self._absent[key] = time.monotonic()
        self._absent.move_to_end(key)
        while len(self._absent) > self.max_entries:
            self._absent.popitem(last=False)


def _retrieved(task: asyncio.Task[object]) -> None:
    """Mark a first-sight read's error as seen: its callers get it (or all hung up), no 'never retrieved' noise."""
    if not task.cancelled():
        task.exception()
