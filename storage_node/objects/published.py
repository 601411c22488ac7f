"""The published tree: ``published/<id[:2]>/<image_id>/<variant>``, hard links to the variant files that a web server
in front of the node (nginx, ``minicdn nginx-config``) may send straight from disk.

Only what the node itself would send to anyone, unsigned, is linked here: a named (not ``auto``) variant of a `ready`,
public image whose app has no hotlink allowlist (the node decides, ``storage_node.handlers_read``). The layout is
derived from the URL alone (the id's first two characters, not the hash shard of ``objects/``), so nginx finds a file
with ``try_files`` and passes a miss to the node, which publishes it. Links are removed (``unpublish``) before any
removal of the image's files, so nginx stops serving no later than the node does.

A variant's mtime is not a clock reading but ``variant_mtime``: a function of the original's recorded SHA-256 and
the variant's name, so nginx's ETag (mtime and size, in hex) is the same on every replica, and equal to the node's
(``etag_for_file``). The read times the tier manager needs are kept in variants' atimes instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
from pathlib import Path

from common.ids import check_image_id

# Bump when variant output changes, so that ETags change with it.
RENDER_VERSION = "r2"
# Variant mtimes lie in [EPOCH, EPOCH + 2**28 s): a fixed, plainly fake time range (2001 to 2009).
_EPOCH = 1_000_000_000


def variant_mtime(sha256: str, name: str) -> int:
    """The mtime (whole seconds) of variant ``name`` of the original whose recorded hash is ``sha256``."""
    digest = hashlib.sha256(f"{sha256}:{name}:{RENDER_VERSION}".encode()).hexdigest()
    return _EPOCH + int(digest[:7], 16)


def etag_for_file(mtime: int, size: int) -> str:
    """nginx's ETag of a static file (without the quotes): ``<mtime hex>-<size hex>``."""
    return f"{mtime:x}-{size:x}"


def fix_mtime(path: Path, mtime: int) -> os.stat_result:
    """Give ``path`` its deterministic mtime when it has another one (a variant built before this scheme), keeping
    its atime (the last-read marker). Returns its stat. Raises FileNotFoundError."""
    st = os.stat(path)
    if st.st_mtime_ns // 1_000_000_000 != mtime:
        os.utime(path, ns=(st.st_atime_ns, mtime * 1_000_000_000))
        st = os.stat(path)
    return st


KNOWN_IMAGES = 100_000  # images whose links this process remembers (the fast lane's "already published")


class PublishedTree:
    def __init__(self, root: Path) -> None:
        self.root = root
        # What this process linked or found linked, per image (insertion order: the oldest forgotten first).
        # Memory only, for the fast lane (``storage_node.lane``), which serves a variant itself only once it is
        # published: serving never depends on it, only whether a hit still goes through the path that links.
        self._known: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def is_known(self, image_id: str, name: str) -> bool:
        with self._lock:
            names = self._known.get(image_id)
            return names is not None and name in names

    def _remember(self, image_id: str, name: str) -> None:
        with self._lock:
            names = self._known.get(image_id)
            if names is None:
                if len(self._known) >= KNOWN_IMAGES:
                    del self._known[next(iter(self._known))]
                names = self._known[image_id] = set()
            names.add(name)

    def _forget(self, image_id: str, name: str | None = None) -> None:
        with self._lock:
            if name is None:
                self._known.pop(image_id, None)
            elif image_id in self._known:
                self._known[image_id].discard(name)

    def image_dir(self, image_id: str) -> Path:
        check_image_id(image_id)  # the alphabet has no separators: the path stays under root
        return self.root / image_id[:2] / image_id

    def publish(self, source: Path, image_id: str, name: str) -> bool:
        """Hard-link ``source`` (a variant file in ``objects/``) as ``name``; True when linked now. A source removed
        meanwhile links nothing. The caller checks, after this returns, that the image is still servable (and
        unpublishes otherwise): removals unpublish first, so a link made after that check is always undone."""
        folder = self.image_dir(image_id)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, folder / name)
        except FileExistsError:
            self._remember(image_id, name)
            return False
        except FileNotFoundError:  # gone since it was served (evicted, deleted): nothing to publish
            return False
        self._remember(image_id, name)
        return True

    def unpublish(self, image_id: str) -> None:
        """Remove every link of the image (blocking, microseconds: a few unlinks)."""
        self._forget(image_id)
        shutil.rmtree(self.image_dir(image_id), ignore_errors=True)

    def unpublish_variant(self, image_id: str, name: str) -> None:
        self._forget(image_id, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.image_dir(image_id) / name)

    def clear(self) -> None:
        """Remove every link (an app gained a hotlink allowlist: which of its images are linked is not known here).
        The tree fills again as the node serves."""
        with self._lock:
            self._known.clear()
        if not self.root.exists():
            return
        for entry in os.scandir(self.root):
            shutil.rmtree(entry.path, ignore_errors=True)

    def linked(self, image_id: str) -> list[str]:
        """The variant names linked for an image (tests, operators)."""
        with contextlib.suppress(FileNotFoundError):
            return sorted(e.name for e in os.scandir(self.image_dir(image_id)))
        return []
