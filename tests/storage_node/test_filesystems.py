"""A node names the file systems under its tiers so that the control plane counts a shared disk once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from storage_node.objects.store import MACHINE_ID, Store, filesystem_id


def test_tiers_on_one_disk_report_one_file_system(tmp_path: Path) -> None:
    store = Store(tmp_path / "hot", capacity_bytes=10_000, cold_dir=tmp_path / "cold", cold_capacity_bytes=10_000)
    store.prepare()
    usage = store.usage()
    fs_id = filesystem_id(tmp_path / "hot")
    assert fs_id == f"{MACHINE_ID}:{os.stat(tmp_path).st_dev}" == filesystem_id(tmp_path / "cold")
    assert list(usage.filesystems) == [fs_id]
    disk = shutil.disk_usage(tmp_path)
    assert usage.filesystems[fs_id]["total_bytes"] == disk.total
    # Two stores (two node processes) in one directory tree name the same file system.
    other = Store(tmp_path / "other")
    other.prepare()
    assert list(other.usage().filesystems) == [fs_id]


def test_a_node_never_has_more_room_than_its_disk(tmp_path: Path) -> None:
    disk = shutil.disk_usage(tmp_path)
    store = Store(tmp_path / "hot", capacity_bytes=disk.total * 4)  # configured far beyond the disk
    store.prepare()
    usage = store.usage()
    assert usage.free_bytes <= shutil.disk_usage(tmp_path).free + 64 * 1024 * 1024
