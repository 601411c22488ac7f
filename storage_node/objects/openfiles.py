"""A bounded LRU of open files of the hottest (image, variant) pairs, so that a hit is served with no path walk and
no thread hop: the descriptor, its size and the response headers, made once per file.

An entry is dropped the moment the store changes the image's files (``Store`` calls ``drop``: a delete, a
rejection, a removed or evicted variant, a replaced, moved or damaged original, another process's news) and, as a
safety net for changes made elsewhere, when a hit's ``fstat`` shows the file unlinked. Descriptors are reference
counted: a dropped entry is closed only once the last response sending from it is done, so closing never races a
``sendfile`` in flight. ``drop`` may be called from any thread (the store's writes run in threads).
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

Key = tuple[str, str]  # (image id, file name: ``original`` or a variant)


@dataclass(eq=False)
class OpenFile:
    """One open file and what its responses need. ``headers`` never change for the life of the entry."""

    key: Key
    fobj: io.BufferedReader
    size: int
    etag: str  # without the quotes
    headers: Mapping[str, str]  # of a 200, ETag included
    refs: int = 1  # the opener's; the cache holds one more while the entry is in it
    block: bytes = b""  # ``headers`` as header lines, for the fast lane (``storage_node.lane``)
    block_304: bytes = b""  # those a 304 carries
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fstat(self) -> os.stat_result:
        """The file's current stat, through the descriptor (no path walk: cheap enough for the loop)."""
        return os.fstat(self.fobj.fileno())

    def acquire(self) -> None:
        with self._lock:
            self.refs += 1

    def release(self) -> None:
        with self._lock:
            self.refs -= 1
            last = self.refs == 0
        if last:
            self.fobj.close()


class OpenFiles:
    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._files: OrderedDict[Key, OpenFile] = OrderedDict()
        self._names: dict[str, set[str]] = {}  # image id -> its names held: ``drop`` finds them without a scan
        # Bumped by every drop: a file opened before a drop is not cached after it (it may be the dropped one).
        self.epoch = 0

    def __len__(self) -> int:
        return len(self._files)

    def get(self, key: Key) -> OpenFile | None:
        """The entry, acquired for the caller (who must ``release`` it), or None."""
        with self._lock:
            held = self._files.get(key)
            if held is None:
                return None
            self._files.move_to_end(key)
            held.acquire()
            return held

    def put(self, held: OpenFile, epoch: int) -> bool:
        """Keep ``held`` (opened after ``epoch`` was read) unless something was dropped since: then the caller's
        reference stays its only one. True when cached."""
        if self.size <= 0:
            return False
        evicted: list[OpenFile] = []
        with self._lock:
            if epoch != self.epoch:
                return False
            old = self._files.pop(held.key, None)
            if old is not None:
                evicted.append(old)
            held.acquire()
            self._files[held.key] = held
            self._names.setdefault(held.key[0], set()).add(held.key[1])
            while len(self._files) > self.size:
                _key, oldest = self._files.popitem(last=False)
                self._unindex(oldest.key)
                evicted.append(oldest)
        for entry in evicted:
            entry.release()
        return True

    def drop(self, image_id: str, name: str | None = None) -> None:
        """Forget the image's entry ``name`` (every one of the image's when None); any thread."""
        dropped: list[OpenFile] = []
        with self._lock:
            self.epoch += 1
            names = self._names.get(image_id, set()) if name is None else {name}
            for n in list(names):
                held = self._files.pop((image_id, n), None)
                if held is not None:
                    self._unindex(held.key)
                    dropped.append(held)
        for held in dropped:
            held.release()

    def discard(self, held: OpenFile) -> None:
        """Forget ``held`` if it is still the entry of its key (a hit found it stale)."""
        with self._lock:
            if self._files.get(held.key) is not held:
                return
            del self._files[held.key]
            self._unindex(held.key)
        held.release()

    def sweep(self) -> int:
        """Drop entries whose files were unlinked (changed by another process, which told us nothing): their
        descriptors would keep the disk space of removed files. Returns how many; cheap (an fstat each)."""
        with self._lock:
            entries = list(self._files.values())
        stale = [held for held in entries if _unlinked(held)]
        for held in stale:
            self.discard(held)
        return len(stale)

    async def sweep_forever(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            self.sweep()

    def clear(self) -> None:
        with self._lock:
            entries = list(self._files.values())
            self._files.clear()
            self._names.clear()
            self.epoch += 1
        for held in entries:
            held.release()

    def _unindex(self, key: Key) -> None:
        """Under the lock."""
        names = self._names.get(key[0])
        if names is not None:
            names.discard(key[1])
            if not names:
                del self._names[key[0]]


def _unlinked(held: OpenFile) -> bool:
    try:
        return held.fstat().st_nlink == 0
    except (OSError, ValueError):  # ValueError: closed meanwhile (dropped by another thread)
        return True
