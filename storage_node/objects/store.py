"""Disk layout of a node: ``objects/<aa>/<bb>/<image_id>/{original,meta.json,<variant>}`` and ``tmp/``, in the hot
data directory; with a cold tier, ``<cold_dir>/objects/<aa>/<bb>/<image_id>/original`` and ``<cold_dir>/tmp/``.

Bytes are written once: streamed into ``tmp/`` (same file system), fsynced, then ``os.replace``d into
place and the directory fsynced, so a crash leaves either the whole file or none. Every path is
checked to stay inside the data directory.

Tiers: the sidecar, the private marker and every variant always live in the hot tier; only an original
moves. A move copies the bytes into the other tier, verifies them against the recorded SHA-256, renames
them into place and only then (``drop_other_copy``) removes the old copy, so at every instant at least
one tier holds the whole original. If a crash leaves both copies, ``prepare`` keeps the hot one.
An original's mtime, and a variant's atime (its mtime is fixed: ``published.variant_mtime``), is its last-read
marker (reads never write files, so nothing else changes it once committed): set at commit, then refreshed from
the in-memory read times by ``flush_reads``.

The sidecar is a copy of the record (the SHA-256, size and type Postgres holds since ingest), written with
bytes known to hash to it: at ingest, by a verified replica copy, or restored from Postgres
(``restore_meta``). It is never derived from the file's current bytes, which may be the damaged ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common.ids import check_image_id, is_image_id, shard
from storage_node.objects.formats import CONTENT_TYPES
from storage_node.objects.openfiles import OpenFiles
from storage_node.objects.published import PublishedTree, variant_mtime
from storage_node.objects.verify import Stamp, stamp_of

ORIGINAL = "original"
META = "meta.json"
# Present (empty, fsynced with the original) when the image is private: kept apart from the sidecar so a
# lost or restored sidecar can never turn a private image public.
PRIVATE_MARKER = "private"
# Present (empty, not fsynced) once this node knows the image is `ready`, which lasts until a delete removes
# the folder: lets a process that has not asked Postgres yet serve it while Postgres is down (``ServeGate``).
READY_MARKER = "ready"
# In the data directory, removed at each start of the node (``empty_tmp``): every ready marker agreed with Postgres
# during this run of the node.
READY_MARKS_CHECKED = "ready-marks-checked"
NOT_VARIANTS = frozenset({ORIGINAL, META, PRIVATE_MARKER, READY_MARKER})
HOT, COLD = "hot", "cold"
BLOCK = 1024 * 1024
MAX_COLD_READS = 1000  # read times kept per cold original (tiers.promote_reads is at most this)
DIR_CACHE_SIZE = 65536  # image ids whose directory path is remembered (a few MB)
_SHA256_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class ObjectMeta:
    """What serving the original needs, kept beside it so reads never touch Postgres."""

    sha256: str
    content_type: str
    bytes: int
    private: bool = False


@dataclass(frozen=True)
class TierUsage:
    capacity_bytes: int
    used_bytes: int
    free_bytes: int
    originals: int


@dataclass(frozen=True)
class Usage:
    capacity_bytes: int
    used_bytes: int
    free_bytes: int
    objects: int
    # Per tier (``hot`` always; ``cold`` only with a cold directory) and the bytes of variants (all hot).
    tiers: dict[str, TierUsage] = field(default_factory=dict, compare=False)
    variant_bytes: int = field(default=0, compare=False)
    # The file systems under the tiers, by identity (``filesystem_id``): {"total_bytes", "free_bytes"}, so the
    # control plane counts a disk shared by several nodes (or both tiers) once.
    filesystems: dict[str, dict[str, int]] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class StoredFile:
    """One file found by a scan: what the tier policy needs to decide about it."""

    image_id: str
    name: str
    bytes: int
    last_read: float  # wall-clock seconds: the newer of the in-memory read time and the file's mtime
    links: int


@dataclass
class _Entry:
    meta: ObjectMeta
    variants: set[str]
    tier: str = HOT
    verified: Stamp | None = None  # the original's state when its bytes last hashed to the record


class CopyMismatch(Exception):
    """The copy made for a tier move does not hash to the recorded SHA-256: nothing was switched."""


class SidecarLost(Exception):
    """The original is stored here but its sidecar is missing, torn or not a record: restore it from the
    record in Postgres (``restore_meta``), never from the bytes."""


class Store:
    def __init__(
        self,
        data_dir: str | Path,
        capacity_bytes: int = 0,
        meta_cache_size: int = 65536,
        *,
        cold_dir: str | Path = "",
        cold_capacity_bytes: int = 0,
        open_files: int = 1024,
    ) -> None:
        self.root = Path(data_dir).absolute()
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        # Links a web server in front may send from (``published``); unlinked before any of an image's files go.
        self.published = PublishedTree(self.root / "published")
        # Descriptors of hot files for the read path; every change below to an image's files drops its entries.
        self.open_files = OpenFiles(open_files)
        self.capacity_bytes = capacity_bytes
        self.cold_root = Path(cold_dir).absolute() if str(cold_dir) else None
        self.cold_objects = self.cold_root / "objects" if self.cold_root else None
        self.cold_tmp = self.cold_root / "tmp" if self.cold_root else None
        self.cold_capacity_bytes = cold_capacity_bytes
        self._lock = threading.Lock()
        self._used = {HOT: 0, COLD: 0}
        self._originals = {HOT: 0, COLD: 0}
        self._variant_bytes: dict[str, int] = {}  # image id -> bytes of its variants on this node
        self._dirty_variant_bytes: set[str] = set()  # images whose variant bytes changed since last taken
        self._reads: dict[tuple[str, str], float] = {}  # (image id, file name) -> last read, not yet flushed
        self._read_marks: dict[tuple[str, str], float] = {}  # the same, kept after the flush for the policy
        self._cold_reads: dict[str, list[float]] = {}  # image id -> recent read times of its cold original
        # Hot-path cache: image id -> its metadata, the variants known to be on disk, its original's tier.
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._meta_cache_size = meta_cache_size
        self._dirs: dict[str, Path] = {}  # image id -> its hot directory (``image_dir``: checked once, then reused)
        # Originals here that failed a check against their record, with the stamp of the damaged file (None:
        # unknown): never served until a verified copy replaces them (``commit_original`` here, or another
        # process's, which ``replaced_since_corrupt`` notices) or they are removed. Postgres has them `corrupt`.
        self._corrupt: dict[str, Stamp | None] = {}
        # Set when the node runs several processes (``node.workers``): called, from any thread, with ``(image_id,
        # "variants")`` when this process removed variants and ``(image_id, "corrupt")`` when it found an original
        # damaged, so that the others forget what they remember of it (``storage_node.siblings``).
        self.on_change: Callable[[str, str], None] | None = None

    @property
    def tiered(self) -> bool:
        return self.cold_root is not None

    # --- set-up -------------------------------------------------------------------------------------
    def empty_tmp(self) -> None:
        """Drop leftovers of interrupted uploads and builds, and the last run's ready-marks stamp: only at the
        node's start, while no other process of the node runs."""
        (self.root / READY_MARKS_CHECKED).unlink(missing_ok=True)
        for tmp in (self.tmp, self.cold_tmp):
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True, exist_ok=True)

    def prepare(self, *, empty_tmp: bool = True) -> None:
        """Create the layout, drop leftovers of interrupted uploads (``empty_tmp``; the primary of several processes
        leaves that to their parent, as the others may be writing there) and moves, and count what is stored."""
        self.objects.mkdir(parents=True, exist_ok=True)
        if empty_tmp:
            self.empty_tmp()
        self.tmp.mkdir(parents=True, exist_ok=True)
        if self.cold_objects is not None and self.cold_tmp is not None:
            self.cold_objects.mkdir(parents=True, exist_ok=True)
            self.cold_tmp.mkdir(parents=True, exist_ok=True)
            for image_id, _folder in list(_image_dirs(self.cold_objects)):
                if (self.image_dir(image_id) / ORIGINAL).exists():  # a move a crash interrupted: keep hot
                    shutil.rmtree(self.cold_dir_of(image_id), ignore_errors=True)
        used = {HOT: 0, COLD: 0}
        originals = {HOT: 0, COLD: 0}
        variant_bytes: dict[str, int] = {}
        seen: set[tuple[int, int]] = set()  # deduplicated originals are hard links: count each inode once
        for tier, base in self._tier_bases():
            for image_id, folder in _image_dirs(base):
                for entry in os.scandir(folder):
                    with contextlib.suppress(FileNotFoundError):
                        st = entry.stat()
                        if st.st_nlink == 1 or (st.st_dev, st.st_ino) not in seen:
                            used[tier] += st.st_size
                            seen.add((st.st_dev, st.st_ino))
                        if entry.name not in NOT_VARIANTS:
                            variant_bytes[image_id] = variant_bytes.get(image_id, 0) + st.st_size
                    originals[tier] += entry.name == ORIGINAL
        with self._lock:
            self._used, self._originals = used, originals
            self._variant_bytes = variant_bytes
            self._dirty_variant_bytes = set(variant_bytes)

    def _tier_bases(self) -> list[tuple[str, Path]]:
        bases = [(HOT, self.objects)]
        if self.cold_objects is not None:
            bases.append((COLD, self.cold_objects))
        return bases

    # --- paths --------------------------------------------------------------------------------------
    def image_dir(self, image_id: str) -> Path:
        path = self._dirs.get(image_id)
        if path is None:  # an upload's directory is asked for a dozen times: the checks and the joins run once
            check_image_id(image_id)
            aa, bb = shard(image_id)
            path = self.objects / aa / bb / image_id
            if os.path.commonpath([self.objects, path]) != str(self.objects):
                raise ValueError("path escapes the data directory")
            if len(self._dirs) >= DIR_CACHE_SIZE:  # (bounded: a plain reset, the next ones are computed again)
                self._dirs.clear()
            self._dirs[image_id] = path
        return path

    def cold_dir_of(self, image_id: str) -> Path:
        if self.cold_objects is None:
            raise ValueError("this node has no cold tier")
        return self.cold_objects / self.image_dir(image_id).relative_to(self.objects)

    def path_for(self, image_id: str, name: str) -> Path:
        """A file's path in the hot tier (variants, sidecar; an original only while it is hot)."""
        if "/" in name or name in ("", ".", ".."):
            raise ValueError("bad object name")
        return self.image_dir(image_id) / name

    def _original_in(self, image_id: str, tier: str) -> Path:
        return (self.image_dir(image_id) if tier == HOT else self.cold_dir_of(image_id)) / ORIGINAL

    def original_paths(self, image_id: str) -> list[Path]:
        """Where the original is, best guess first (memory only when cached), then the other tier: a reader
        that finds the first gone (a move switched tiers meanwhile) opens the second."""
        with self._lock:
            entry = self._cache.get(image_id)
            tier = entry.tier if entry is not None else None
        hot = self.path_for(image_id, ORIGINAL)
        if self.cold_objects is None:
            return [hot]
        cold = self._original_in(image_id, COLD)
        if tier is None and not hot.exists() and cold.exists():
            tier = COLD
        return [cold, hot] if tier == COLD else [hot, cold]

    def original_path(self, image_id: str) -> Path:
        return self.original_paths(image_id)[0]

    def original_sha256(self, image_id: str) -> str | None:
        """SHA-256 of the stored original's bytes as they are now (either tier); None when it is not here.
        Blocking: one read of the file."""
        for path in self.original_paths(image_id):
            with contextlib.suppress(FileNotFoundError):
                return _sha256_of(path)
        return None

    def tier_of(self, image_id: str) -> str | None:
        """The tier holding the original (blocking), or None when it is not stored here."""
        for tier in (HOT, COLD) if self.tiered else (HOT,):
            if self._original_in(image_id, tier).exists():
                return tier
        return None

    def new_tmp_path(self, tier: str = HOT) -> Path:
        base = self.cold_tmp if tier == COLD and self.cold_tmp is not None else self.tmp
        return base / uuid.uuid4().hex

    # --- writes (blocking: call through asyncio.to_thread) ------------------------------------------
    def commit(self, tmp_path: Path, image_id: str, name: str) -> Path:
        """fsync ``tmp_path``, rename it to ``name`` in the image's directory, fsync the directory. A variant gets its
        deterministic mtime first (``published.variant_mtime``: equal ETags on every replica, and for nginx)."""
        if name not in NOT_VARIANTS:
            with contextlib.suppress(SidecarLost):
                meta = self.meta(image_id)
                if meta is not None:
                    st = tmp_path.stat()
                    os.utime(tmp_path, ns=(st.st_atime_ns, variant_mtime(meta.sha256, name) * 1_000_000_000))
        return self._commit_files(image_id, [(tmp_path, name, True)])

    def commit_original(self, tmp_path: Path, image_id: str, meta: ObjectMeta) -> Path:
        """Move the original and its sidecar into place with one directory fsync. The caller has verified
        that the bytes at ``tmp_path`` hash to ``meta.sha256`` (the record), so they count as verified.

        The sidecar is not fsynced itself: it is a copy of the record, restored from Postgres
        (``restore_meta``) if a crash leaves it missing or torn. The original's presence marks a complete
        object.
        """
        meta_tmp = self.new_tmp_path()
        meta_tmp.write_text(_meta_json(meta))
        files = [(meta_tmp, META, False), (tmp_path, ORIGINAL, True)]
        if meta.private:
            marker = self.new_tmp_path()
            marker.touch()
            files.insert(0, (marker, PRIVATE_MARKER, True))
        dest = self._commit_files(image_id, files)
        self._remember(image_id, meta, HOT, stamp_of(dest.stat()))
        with self._lock:
            self._corrupt.pop(image_id, None)
        return dest

    def link_copy(self, src_image_id: str, image_id: str, meta: ObjectMeta) -> Path | None:
        """Dedupe: store ``image_id``'s original as a hard link to ``src_image_id``'s identical bytes (the
        inode's link count is the reference count, so deleting either image keeps the other intact).
        None when the source is gone, cold or does not hash to ``meta``; the caller then stores the bytes.
        The link is hashed before it is committed: a damaged source must not become a second bad copy."""
        src = self.path_for(src_image_id, ORIGINAL)
        tmp = self.new_tmp_path()
        try:
            if src.stat().st_size != meta.bytes:
                return None
            os.link(src, tmp)
            if _sha256_of(tmp) != meta.sha256:
                self.discard_tmp(tmp)
                return None
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
                _fsync_file(tmp_path)
        grown = new_objects = variant_grown = 0
        dest = folder
        for tmp_path, name, _durable in files:
            dest = self.path_for(image_id, name)
            old_size = dest.stat().st_size if dest.exists() else None
            os.replace(tmp_path, dest)
            st = dest.stat()
            if st.st_nlink == 1:  # a hard link to bytes already stored (dedupe) takes no new space
                grown += st.st_size - (old_size or 0)
            if name not in NOT_VARIANTS:
                variant_grown += st.st_size - (old_size or 0)
            new_objects += name == ORIGINAL and old_size is None
            self.open_files.drop(image_id, name)  # a replaced file: its old descriptor is not it any more
        _fsync_dir(folder)
        for created in new_dirs:
            _fsync_dir(created.parent)
        with self._lock:
            self._used[HOT] += grown
            self._originals[HOT] += new_objects
            if variant_grown:
                self._add_variant_bytes(image_id, variant_grown)
        return dest

    def _add_variant_bytes(self, image_id: str, delta: int) -> None:
        """Under the lock."""
        total = self._variant_bytes.get(image_id, 0) + delta
        if total > 0:
            self._variant_bytes[image_id] = total
        else:
            self._variant_bytes.pop(image_id, None)
        self._dirty_variant_bytes.add(image_id)

    def remove_image(self, image_id: str) -> None:
        """Remove an image's directory in every tier (a rolled-back upload, later deletes)."""
        self.published.unpublish(image_id)  # first: a published link would keep the bytes served (and counted)
        freed = {HOT: 0, COLD: 0}
        had = {HOT: 0, COLD: 0}
        folders = [(HOT, self.image_dir(image_id))]
        if self.tiered:
            folders.append((COLD, self.cold_dir_of(image_id)))
        for tier, folder in folders:
            if not folder.exists():
                continue
            for entry in folder.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat()
                    freed[tier] += st.st_size if st.st_nlink == 1 else 0  # other images still link shared bytes
                    had[tier] |= entry.name == ORIGINAL
            shutil.rmtree(folder, ignore_errors=True)
        self.open_files.drop(image_id)  # after the removal: a descriptor opened meanwhile is not kept either
        with self._lock:
            for tier in (HOT, COLD):
                self._used[tier] -= freed[tier]
                self._originals[tier] -= had[tier]
            if self._variant_bytes.pop(image_id, None) is not None:
                self._dirty_variant_bytes.add(image_id)
            self._cache.pop(image_id, None)
            self._cold_reads.pop(image_id, None)
            self._corrupt.pop(image_id, None)
        self.published.unpublish(image_id)  # again: a link made meanwhile (before the files went) is undone

    def remove_variants(self, image_id: str) -> int:
        """Remove every variant of an image on this node (they may have been made from bad bytes); returns
        the bytes freed. The original, its sidecar and the private marker stay."""
        self.published.unpublish(image_id)
        freed = 0
        with contextlib.suppress(FileNotFoundError):
            for file in os.scandir(self.image_dir(image_id)):
                if file.name not in NOT_VARIANTS:
                    with contextlib.suppress(FileNotFoundError):
                        size = file.stat().st_size
                        os.unlink(file.path)
                        freed += size
        with self._lock:
            self._used[HOT] -= freed
            if freed:
                self._add_variant_bytes(image_id, -freed)
            cached = self._cache.get(image_id)
            if cached is not None:
                cached.variants.clear()
        self.open_files.drop(image_id)
        if freed and self.on_change is not None:
            self.on_change(image_id, "variants")
        return freed

    def discard_tmp(self, tmp_path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()

    # --- tiers (blocking; the node's tier manager calls these, bounded in rate) ---------------------
    def evict_variant(self, image_id: str, name: str, idle_s: float, now: float) -> int:
        """Remove a variant (a cache entry, rebuilt on demand) unless it was read in the last ``idle_s``
        (a reader may be about to open it). Returns the bytes freed (0 when kept or already gone)."""
        if name in NOT_VARIANTS:
            raise ValueError("only variants are evicted")
        path = self.path_for(image_id, name)
        # Under the lock from the check to the unlink: a request records its read (under the same lock)
        # either before (the variant is kept) or after (it finds the file gone and rebuilds it).
        with self._lock:
            if now - self._read_marks.get((image_id, name), 0.0) < idle_s:
                return 0
            entry = self._cache.get(image_id)
            if entry is not None:
                entry.variants.discard(name)  # from now on a request rebuilds it
            self.published.unpublish_variant(image_id, name)
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                return 0
            self._used[HOT] -= size
            self._add_variant_bytes(image_id, -size)
        self.open_files.drop(image_id, name)
        if self.on_change is not None:
            self.on_change(image_id, "variants")
        return size

    def switch_tier(self, image_id: str, to: str, expected_sha256: str) -> int:
        """Copy the original into tier ``to``, verify it against ``expected_sha256``, rename it into place
        and point readers at it. The old copy stays until ``drop_other_copy``. Returns the bytes copied;
        0 when there is nothing to move (gone, already there, or a deduplicated link that stays hot).
        Raises CopyMismatch (the source bytes are bad: the scrubber's business) with nothing switched."""
        if self.cold_objects is None or to not in (HOT, COLD):
            raise ValueError("no such tier")
        frm = COLD if to == HOT else HOT
        src, dest = self._original_in(image_id, frm), self._original_in(image_id, to)
        try:
            st = src.stat()
        except FileNotFoundError:
            return 0
        if dest.exists() or (to == COLD and st.st_nlink > 1):
            return 0  # a shared (deduplicated) original would take room twice: it stays hot
        tmp = self.new_tmp_path(to)
        try:
            shutil.copyfile(src, tmp)
            _fsync_file(tmp)
            digest = _sha256_of(tmp)  # the copy as written, read back: catches bad source and bad writes
            if digest != expected_sha256:
                raise CopyMismatch(f"{image_id}: copy hashes to {digest[:12]}..., recorded {expected_sha256[:12]}...")
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))  # keep the last-read marker
            folder = dest.parent
            if to == COLD:
                new_dirs = [d for d in (folder.parent.parent, folder.parent, folder) if not d.exists()]
                folder.mkdir(parents=True, exist_ok=True)
            else:
                new_dirs = []  # never recreate a hot directory: its absence means the image was removed
            os.replace(tmp, dest)
            _fsync_dir(folder)
            for created in new_dirs:
                _fsync_dir(created.parent)
        except FileNotFoundError:
            return 0  # removed meanwhile
        finally:
            self.discard_tmp(tmp)
        with self._lock:
            self._used[to] += st.st_size
            self._originals[to] += 1
            entry = self._cache.get(image_id)
            if entry is not None:
                entry.tier = to
            self._cold_reads.pop(image_id, None)
        if not src.exists():  # removed while we copied (a delete): remove our copy too
            self._unlink_original(image_id, to)
        return st.st_size

    def drop_other_copy(self, image_id: str, kept: str) -> None:
        """After ``switch_tier(.., kept, ..)`` and a grace period: remove the original from the other tier."""
        if self._original_in(image_id, kept).exists():
            self._unlink_original(image_id, COLD if kept == HOT else HOT)

    def _unlink_original(self, image_id: str, tier: str) -> None:
        path = self._original_in(image_id, tier)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)
        if tier == COLD:
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # an empty cold image directory
        with self._lock:
            self._used[tier] -= size
            self._originals[tier] -= 1
            entry = self._cache.get(image_id)
            if entry is not None:
                entry.tier = COLD if tier == HOT else HOT
        self.open_files.drop(image_id, ORIGINAL)

    def scan(self, tier: str) -> Iterator[StoredFile]:
        """Every file of interest in a tier (variants and originals hot, originals cold), one directory at a
        time (blocking). ``last_read`` merges the reads in memory with the mtime markers on disk."""
        base = self.objects if tier == HOT else self.cold_objects
        if base is None:
            return
        for image_id, folder in _image_dirs(base):
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(folder):
                    if entry.name in (META, PRIVATE_MARKER):
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        st = entry.stat()
                        with self._lock:
                            mark = self._read_marks.get((image_id, entry.name), 0.0)
                        # A variant's read marker is its atime (its mtime is fixed: ``published``); reads by a web
                        # server in front move it too, where the file system records atimes (relatime: daily).
                        on_disk = st.st_mtime if entry.name == ORIGINAL else st.st_atime
                        yield StoredFile(image_id, entry.name, st.st_size, max(mark, on_disk), st.st_nlink)

    # --- reads --------------------------------------------------------------------------------------
    def note_read(self, image_id: str, name: str, now: float | None = None) -> None:
        """Memory only, no I/O (the serving path): remember that a file was read now."""
        now = time.time() if now is None else now
        with self._lock:
            self._reads[(image_id, name)] = now
            self._read_marks[(image_id, name)] = now
            if name == ORIGINAL:
                entry = self._cache.get(image_id)
                if entry is not None and entry.tier == COLD:
                    times = self._cold_reads.setdefault(image_id, [])
                    times.append(now)
                    if len(times) > MAX_COLD_READS:  # enough to decide a promotion: memory stays bounded
                        del times[: len(times) - MAX_COLD_READS]

    def last_read(self, image_id: str, name: str) -> float:
        """The last read remembered in memory (0 when none since the start)."""
        with self._lock:
            return self._read_marks.get((image_id, name), 0.0)

    def flush_reads(self, keep_marks_s: float) -> int:
        """Write the read times gathered in memory as the files' mtimes (the marker that survives a restart),
        and forget in-memory marks older than ``keep_marks_s``. Returns the files touched (blocking). A
        touched original is hashed again on its next serve (its ctime moved: see ``verify.Stamp``)."""
        with self._lock:
            reads, self._reads = self._reads, {}
        touched = 0
        for (image_id, name), when in reads.items():
            if name == ORIGINAL and self.is_corrupt(image_id):
                continue  # a damaged file stays untouched: a new stamp on it must mean a new file
            paths = self.original_paths(image_id) if name == ORIGINAL else [self.path_for(image_id, name)]
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    if name != ORIGINAL:  # a variant's mtime is its ETag (``published``): its atime is the marker
                        if when > st.st_atime:
                            os.utime(path, ns=(int(when * 1e9), st.st_mtime_ns))
                            touched += 1
                    elif when > st.st_mtime:
                        os.utime(path, ns=(st.st_atime_ns, int(when * 1e9)))
                        touched += 1
        cutoff = time.time() - keep_marks_s
        with self._lock:
            self._read_marks = {k: v for k, v in self._read_marks.items() if v >= cutoff}
        return touched

    def cold_reads(self, since: float) -> dict[str, int]:
        """Reads of cold originals since ``since`` (older ones are forgotten), per image."""
        with self._lock:
            out = {}
            for image_id, times in list(self._cold_reads.items()):
                recent = [t for t in times if t >= since]
                if recent:
                    self._cold_reads[image_id] = recent
                    out[image_id] = len(recent)
                else:
                    del self._cold_reads[image_id]
            return out

    def take_variant_bytes(self) -> dict[str, int]:
        """Variant bytes per image changed since the last call (0: none left), for reporting."""
        with self._lock:
            dirty, self._dirty_variant_bytes = self._dirty_variant_bytes, set()
            return {image_id: self._variant_bytes.get(image_id, 0) for image_id in dirty}

    def requeue_variant_bytes(self, image_ids: Iterable[str]) -> None:
        """A report that failed: send these again next time."""
        with self._lock:
            self._dirty_variant_bytes.update(image_ids)

    def cached_meta(self, image_id: str) -> ObjectMeta | None:
        """Memory only, no I/O: safe to call on the event loop."""
        with self._lock:
            cached = self._cache.get(image_id)
            if cached is None:
                return None
            self._cache.move_to_end(image_id)
            return cached.meta

    def has_variant(self, image_id: str, name: str) -> bool:
        """Memory only: True when ``name`` is known to be on disk (built or seen here)."""
        with self._lock:
            cached = self._cache.get(image_id)
            return cached is not None and name in cached.variants

    def note_variant(self, image_id: str, name: str) -> None:
        with self._lock:
            cached = self._cache.get(image_id)
            if cached is not None:
                cached.variants.add(name)

    def meta(self, image_id: str) -> ObjectMeta | None:
        """The record of an original stored here, in either tier, as its sidecar holds it (cached; the first
        read is blocking); None when no original is stored here. Raises SidecarLost when the original is
        here but its sidecar is not a readable record. Whether the bytes still match is for the checks
        (``storage_node.objects.verify``) to say, never for this."""
        cached = self.cached_meta(image_id)
        if cached is not None:
            return cached
        folder = self.image_dir(image_id)
        tier = None
        for candidate in self.original_paths(image_id):
            if candidate.exists():
                tier = HOT if candidate.parent == folder else COLD
                break
        if tier is None:
            return None
        try:
            meta = _parse_meta((folder / META).read_text())
        except (OSError, ValueError, KeyError, TypeError):
            raise SidecarLost(image_id) from None
        if (folder / PRIVATE_MARKER).exists():
            meta = dataclasses.replace(meta, private=True)
        self._remember(image_id, meta, tier)
        return meta

    def mark_ready(self, image_id: str) -> None:
        """Note that the image is `ready` (blocking; nothing when its folder is gone: deleted meanwhile)."""
        with contextlib.suppress(FileNotFoundError):
            (self.image_dir(image_id) / READY_MARKER).touch()

    def keep_ready_marks(self, ready: set[str], since: float) -> int:
        """At start-up, with Postgres's list of the `ready` images held here (read from ``since`` on): remove every
        other ready marker written before ``since`` (the image was deleted, rejected or quarantined while this
        node was down), then stamp the markers checked (``ready_marks_checked``). Blocking; returns the
        markers removed."""
        removed = 0
        for image_id, folder in _image_dirs(self.objects):
            if image_id not in ready:
                marker = os.path.join(folder, READY_MARKER)
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(marker).st_mtime < since:  # (a newer one was written by this run: right)
                        os.unlink(marker)
                        removed += 1
        (self.root / READY_MARKS_CHECKED).touch()
        return removed

    def ready_marks_checked(self) -> bool:
        """Whether the ready markers were checked against Postgres since the node started (blocking)."""
        return (self.root / READY_MARKS_CHECKED).exists()

    def mark_ready_all(self, image_ids: list[str]) -> None:
        for image_id in image_ids:
            self.mark_ready(image_id)

    def ready_marked_at(self, image_id: str) -> float | None:
        """When the ready marker was written (its mtime), None without one (blocking)."""
        try:
            return (self.image_dir(image_id) / READY_MARKER).stat().st_mtime
        except FileNotFoundError:
            return None

    def restore_meta(self, image_id: str, record: ObjectMeta) -> ObjectMeta | None:
        """Write the sidecar (and, for a private image, the private marker) from ``record``, read from
        Postgres; then the same as ``meta``. Blocking."""
        folder = self.image_dir(image_id)
        if not folder.exists():
            if self.tier_of(image_id) != COLD:
                return None  # removed meanwhile (a delete, a repair): nothing to restore, nothing to leave
            folder.mkdir(parents=True, exist_ok=True)  # a cold original whose hot folder was lost
        tmp = self.new_tmp_path()
        tmp.write_text(_meta_json(record))
        os.replace(tmp, folder / META)
        if record.private:
            (folder / PRIVATE_MARKER).touch()
        with self._lock:
            self._cache.pop(image_id, None)
        self.open_files.drop(image_id)  # its headers (Cache-Control) follow the record
        return self.meta(image_id)

    def mark_corrupt(self, image_id: str, damaged: Stamp | None = None) -> bool:
        """Memory only: the original (the file ``damaged`` describes, when known) failed a check against its
        record. Its cached metadata is forgotten and it is not served until a verified copy replaces it.
        False when it was known already."""
        self.published.unpublish(image_id)  # its variants may come from the bad bytes
        self.open_files.drop(image_id)  # not one more byte of it (or of what was made from it) from a cached descriptor
        with self._lock:
            self._cache.pop(image_id, None)
            if image_id in self._corrupt:
                return False
            self._corrupt[image_id] = damaged
        if self.on_change is not None:
            self.on_change(image_id, "corrupt")
        return True

    def is_corrupt(self, image_id: str) -> bool:
        """Memory only: safe to call on the event loop."""
        with self._lock:
            return image_id in self._corrupt

    def corrupt_stamp(self, image_id: str) -> Stamp | None:
        """Memory only: the stamp of the file found damaged (None: unknown, or not known damaged)."""
        with self._lock:
            return self._corrupt.get(image_id)

    def clear_corrupt(self, image_id: str) -> None:
        with self._lock:
            self._corrupt.pop(image_id, None)

    def original_stamp(self, image_id: str) -> Stamp | None:
        """The stamp of the stored original (either tier); None when it is not here. Blocking: a stat."""
        for path in self.original_paths(image_id):
            with contextlib.suppress(FileNotFoundError):
                return stamp_of(path.stat())
        return None

    def replaced_since_corrupt(self, image_id: str) -> bool:
        """Whether another file now stands where a damaged original was (a stand-alone replicator, another
        process, repaired it): the mark is then dropped and the new file is checked like any other on its
        next serve. Blocking: a stat."""
        damaged = self.corrupt_stamp(image_id)
        now = self.original_stamp(image_id)
        if damaged is None or now is None or now == damaged:
            return False
        self.clear_corrupt(image_id)
        return True

    def verified_stamp(self, image_id: str) -> Stamp | None:
        """Memory only: the state of the original when its bytes last hashed to the record (None: unknown)."""
        with self._lock:
            cached = self._cache.get(image_id)
            return cached.verified if cached is not None else None

    def note_verified(self, image_id: str, stamp: Stamp) -> None:
        with self._lock:
            cached = self._cache.get(image_id)
            if cached is not None:
                cached.verified = stamp

    def _remember(self, image_id: str, meta: ObjectMeta, tier: str, verified: Stamp | None = None) -> None:
        with self._lock:
            self._cache[image_id] = _Entry(meta, set(), tier, verified)
            if len(self._cache) > self._meta_cache_size:
                self._cache.popitem(last=False)

    # --- the node's other processes (``node.workers``: ``storage_node.siblings``) -----------------------
    def forget(self, image_id: str) -> None:
        """Memory only: drop what is remembered of an image (another process changed its files)."""
        with self._lock:
            self._cache.pop(image_id, None)
        self.open_files.drop(image_id)

    def add_usage(self, tier: str, used_bytes: int, originals: int) -> None:
        """Count bytes and originals another process of the node stored (or, negative, removed)."""
        with self._lock:
            self._used[tier] += used_bytes
            self._originals[tier] += originals

    def recount_variant_bytes(self, image_id: str) -> None:
        """Read an image's variant bytes from its directory (another process built or removed some). Blocking."""
        total = 0
        with contextlib.suppress(FileNotFoundError):
            for file in os.scandir(self.image_dir(image_id)):
                if file.name not in NOT_VARIANTS:
                    with contextlib.suppress(FileNotFoundError):
                        total += file.stat().st_size
        with self._lock:
            self._add_variant_bytes(image_id, total - self._variant_bytes.get(image_id, 0))

    def usage(self) -> Usage:
        """Capacity, use and room of the node (every tier together) and of each tier (blocking: statvfs)."""
        with self._lock:
            used, originals = dict(self._used), dict(self._originals)
            variant_bytes = sum(self._variant_bytes.values())
        hot_disk = shutil.disk_usage(self.root)
        tiers = {HOT: _tier_usage(self.capacity_bytes, hot_disk, used[HOT], originals[HOT])}
        free = tiers[HOT].free_bytes
        if self.cold_root is not None:
            cold_disk = shutil.disk_usage(self.cold_root)
            tiers[COLD] = _tier_usage(self.cold_capacity_bytes, cold_disk, used[COLD], originals[COLD])
            free += tiers[COLD].free_bytes
            if os.stat(self.root).st_dev == os.stat(self.cold_root).st_dev:
                free = min(free, hot_disk.free)  # both tiers on one disk: its free space counts once
        capacity = sum(t.capacity_bytes for t in tiers.values())
        total_used = used[HOT] + used[COLD]
        filesystems = {filesystem_id(self.root): _disk(hot_disk)}
        if self.cold_root is not None:
            filesystems[filesystem_id(self.cold_root)] = _disk(cold_disk)
        return Usage(capacity, total_used, free, originals[HOT] + originals[COLD], tiers, variant_bytes, filesystems)


def _machine_id() -> str:
    """This machine's identity: systemd's machine-id (stable, distinct per host) or else the host name."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError):
            text = Path(path).read_text().strip()
            if text:
                return text
    return socket.gethostname()


MACHINE_ID = _machine_id()


def filesystem_id(path: Path) -> str:
    """``<machine>:<st_dev>``: equal for two directories (of any processes) on one file system of one machine.
    st_dev alone repeats across machines; the machine id tells them apart."""
    return f"{MACHINE_ID}:{os.stat(path).st_dev}"


def _disk(disk: shutil._ntuple_diskusage) -> dict[str, int]:
    return {"total_bytes": disk.total, "free_bytes": disk.free}


def _tier_usage(capacity_bytes: int, disk: shutil._ntuple_diskusage, used: int, originals: int) -> TierUsage:
    capacity = capacity_bytes or disk.total
    return TierUsage(capacity, used, max(0, min(capacity - used, disk.free)), originals)


def _image_dirs(base: Path) -> Iterator[tuple[str, str]]:
    """(image id, directory) of every image directory under ``base`` (objects/<aa>/<bb>/<id>)."""
    if not base.exists():
        return
    for aa in sorted(os.scandir(base), key=lambda e: e.name):
        if not aa.is_dir():
            continue
        with contextlib.suppress(FileNotFoundError):
            for bb in os.scandir(aa.path):
                if not bb.is_dir():
                    continue
                with contextlib.suppress(FileNotFoundError):
                    for image in os.scandir(bb.path):
                        if image.is_dir() and is_image_id(image.name):  # strays are not ours to touch
                            yield image.name, image.path


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fobj:
        for block in iter(lambda: fobj.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _meta_json(meta: ObjectMeta) -> str:
    return json.dumps({"sha256": meta.sha256, "content_type": meta.content_type, "bytes": meta.bytes})


def _parse_meta(text: str) -> ObjectMeta:
    """A sidecar's record; ValueError when it is not one (torn, or not a hash, type and size)."""
    raw = json.loads(text)
    sha256, content_type, size = raw["sha256"], raw["content_type"], raw["bytes"]
    if not (isinstance(sha256, str) and len(sha256) == 64 and set(sha256) <= _SHA256_HEX):
        raise ValueError("sidecar holds no SHA-256")
    if content_type not in CONTENT_TYPES.values() or not isinstance(size, int) or size < 0:
        raise ValueError("sidecar holds no content type and size")
    return ObjectMeta(sha256, content_type, size)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
