"""Disk layout of a node: ``objects/<aa>/<bb>/<image_id>/{original,meta.json,<variant>}`` and ``tmp/``.

Bytes are written once: streamed into ``tmp/`` (same file system), fsynced, then ``os.replace``d into
place and the directory fsynced, so a crash leaves either the whole file or none. Every path is
checked to stay inside the data directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from common.ids import check_image_id, shard
from storage_node.objects.formats import CONTENT_TYPES, sniff

ORIGINAL = "original"
META = "meta.json"
# Present (empty, fsynced with the original) when the image is private: kept apart from the sidecar so a
# rebuilt sidecar can never turn a private image public.
PRIVATE_MARKER = "private"


@dataclass(frozen=True)
class ObjectMeta:
    """What serving the original needs, kept beside it so reads never touch Postgres."""

    sha256: str
    content_type: str
    bytes: int
    private: bool = False


@dataclass(frozen=True)
class Usage:
    capacity_bytes: int
    used_bytes: int
    free_bytes: int
    objects: int


class Store:
    def __init__(self, data_dir: str | Path, capacity_bytes: int = 0, meta_cache_size: int = 65536) -> None:
        self.root = Path(data_dir).absolute()
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.capacity_bytes = capacity_bytes
        self._lock = threading.Lock()
        self._used_bytes = 0
        self._objects = 0
        # Hot-path cache: image id -> (its metadata, names of the variants known to be on disk).
        self._cache: OrderedDict[str, tuple[ObjectMeta, set[str]]] = OrderedDict()
        self._meta_cache_size = meta_cache_size

    # --- set-up -------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the layout, drop leftovers of interrupted uploads, and count what is stored (blocking)."""
        self.objects.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        used = objects = 0
        seen: set[tuple[int, int]] = set()  # deduplicated originals are hard links: count each inode once
        for dirpath, _dirs, files in os.walk(self.objects):
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(os.path.join(dirpath, name))
                    if st.st_nlink == 1 or (st.st_dev, st.st_ino) not in seen:
                        used += st.st_size
                        seen.add((st.st_dev, st.st_ino))
                if name == ORIGINAL:
                    objects += 1
        with self._lock:
            self._used_bytes, self._objects = used, objects

    # --- paths --------------------------------------------------------------------------------------
    def image_dir(self, image_id: str) -> Path:
        check_image_id(image_id)
        aa, bb = shard(image_id)
        path = self.objects / aa / bb / image_id
        if os.path.commonpath([self.objects, path]) != str(self.objects):
            raise ValueError("path escapes the data directory")
        return path

    def path_for(self, image_id: str, name: str) -> Path:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError("bad object name")
        return self.image_dir(image_id) / name

    def new_tmp_path(self) -> Path:
        return self.tmp / uuid.uuid4().hex

    # --- writes (blocking: call through asyncio.to_thread) ------------------------------------------
    def commit(self, tmp_path: Path, image_id: str, name: str) -> Path:
        """fsync ``tmp_path``, rename it to ``name`` in the image's directory, fsync the directory."""
        return self._commit_files(image_id, [(tmp_path, name, True)])

    def commit_original(self, tmp_path: Path, image_id: str, meta: ObjectMeta) -> Path:
        """Move the original and its sidecar into place with one directory fsync.

        The sidecar is not fsynced itself: it is derived data, rebuilt from the original by ``meta``
        if a crash leaves it missing or torn. The original's presence marks a complete object.
        """
        meta_tmp = self.new_tmp_path()
        meta_tmp.write_text(_meta_json(meta))
        files = [(meta_tmp, META, False), (tmp_path, ORIGINAL, True)]
        if meta.private:
            marker = self.new_tmp_path()
            marker.touch()
            files.insert(0, (marker, PRIVATE_MARKER, True))
        dest = self._commit_files(image_id, files)
        self._remember(image_id, meta)
        return dest

    def link_copy(self, src_image_id: str, image_id: str, meta: ObjectMeta) -> Path | None:
        """Dedupe: store ``image_id``'s original as a hard link to ``src_image_id``'s identical bytes (the
        inode's link count is the reference count, so deleting either image keeps the other intact).
        None when the source is gone or does not match ``meta``; the caller then stores the bytes."""
        src = self.path_for(src_image_id, ORIGINAL)
        tmp = self.new_tmp_path()
        try:
            if src.stat().st_size != meta.bytes:
                return None
            os.link(src, tmp)
        except (FileNotFoundError, OSError):
            self.discard_tmp(tmp)
            return None
        try:
            return self.commit_original(tmp, image_id, meta)
        finally:
            self.discard_tmp(tmp)

    def _commit_files(self, image_id: str, files: list[tuple[Path, str, bool]]) -> Path:
        """fsync the files flagged durable, rename each into the image's directory (in order), then fsync
        the directory, and the parents of directories this created, so the renames survive a crash."""
        folder = self.image_dir(image_id)
        new_dirs = [d for d in (folder.parent.parent, folder.parent, folder) if not d.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        for tmp_path, _name, durable in files:
            if durable:
                fd = os.open(tmp_path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        grown = new_objects = 0
        dest = folder
        for tmp_path, name, _durable in files:
            dest = self.path_for(image_id, name)
            old_size = dest.stat().st_size if dest.exists() else None
            os.replace(tmp_path, dest)
            st = dest.stat()
            if st.st_nlink == 1:  # a hard link to bytes already stored (dedupe) takes no new space
                grown += st.st_size - (old_size or 0)
            new_objects += name == ORIGINAL and old_size is None
        _fsync_dir(folder)
        for created in new_dirs:
            _fsync_dir(created.parent)
        with self._lock:
            self._used_bytes += grown
            self._objects += new_objects
        return dest

    def remove_image(self, image_id: str) -> None:
        """Remove an image's directory (a rolled-back upload, later deletes)."""
        folder = self.image_dir(image_id)
        freed = had_original = 0
        if folder.exists():
            for entry in folder.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat()
                    freed += st.st_size if st.st_nlink == 1 else 0  # other images still link shared bytes
                    had_original |= entry.name == ORIGINAL
            shutil.rmtree(folder, ignore_errors=True)
        with self._lock:
            self._used_bytes -= freed
            self._objects -= had_original
            self._cache.pop(image_id, None)

    def discard_tmp(self, tmp_path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()

    # --- reads --------------------------------------------------------------------------------------
    def cached_meta(self, image_id: str) -> ObjectMeta | None:
        """Memory only, no I/O: safe to call on the event loop."""
        with self._lock:
            cached = self._cache.get(image_id)
            if cached is None:
                return None
            self._cache.move_to_end(image_id)
            return cached[0]

    def has_variant(self, image_id: str, name: str) -> bool:
        """Memory only: True when ``name`` is known to be on disk (built or seen here)."""
        with self._lock:
            cached = self._cache.get(image_id)
            return cached is not None and name in cached[1]

    def note_variant(self, image_id: str, name: str) -> None:
        with self._lock:
            cached = self._cache.get(image_id)
            if cached is not None:
                cached[1].add(name)

    def meta(self, image_id: str) -> ObjectMeta | None:
        """The object's metadata if its original is stored here (cached; the first read is blocking)."""
        cached = self.cached_meta(image_id)
        if cached is not None:
            return cached
        folder = self.image_dir(image_id)
        try:
            size = (folder / ORIGINAL).stat().st_size
        except FileNotFoundError:
            return None
        try:
            raw = json.loads((folder / META).read_text())
            meta = ObjectMeta(raw["sha256"], raw["content_type"], int(raw["bytes"]))
            if meta.bytes != size:
                raise ValueError("sidecar does not match the original")
        except (OSError, ValueError, KeyError, TypeError):
            meta = self._rebuild_meta(image_id)
        if (folder / PRIVATE_MARKER).exists():
            meta = dataclasses.replace(meta, private=True)
        self._remember(image_id, meta)
        return meta

    def _rebuild_meta(self, image_id: str) -> ObjectMeta:
        """Recompute a lost or torn sidecar from the original (hash and magic bytes)."""
        path = self.path_for(image_id, ORIGINAL)
        digest = hashlib.sha256()
        with path.open("rb") as fobj:
            head = fobj.read(64)
            digest.update(head)
            for block in iter(lambda: fobj.read(1024 * 1024), b""):
                digest.update(block)
        meta = ObjectMeta(digest.hexdigest(), CONTENT_TYPES[sniff(head)], path.stat().st_size)
        tmp = self.new_tmp_path()
        tmp.write_text(_meta_json(meta))
        os.replace(tmp, self.path_for(image_id, META))
        return meta

    def _remember(self, image_id: str, meta: ObjectMeta) -> None:
        with self._lock:
            self._cache[image_id] = (meta, set())
            if len(self._cache) > self._meta_cache_size:
                self._cache.popitem(last=False)

    def usage(self) -> Usage:
        disk = shutil.disk_usage(self.root)
        with self._lock:
            used, objects = self._used_bytes, self._objects
        capacity = self.capacity_bytes or disk.total
        free = max(0, min(capacity - used, disk.free))
        return Usage(capacity, used, free, objects)


def _meta_json(meta: ObjectMeta) -> str:
    return json.dumps({"sha256": meta.sha256, "content_type": meta.content_type, "bytes": meta.bytes})


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
