"""The tier policy of a node, pure: which variants to evict under pressure (least recently used first,
never an original), which originals go cold, which come back hot. The tier manager (``tiers``) applies it."""

from __future__ import annotations

import math
from collections.abc import Iterable

from storage_node.objects.store import NOT_VARIANTS, ORIGINAL, StoredFile, TierUsage

DAY_S = 86400.0


def bytes_to_free(hot: TierUsage, high_water: float, low_water: float) -> int:
    """0 while the hot tier's use is at or under ``high_water``; past it, the bytes that bring it back to
    ``low_water`` (use counts what the disk really lacks, so foreign files on it are pressure too)."""
    if hot.capacity_bytes <= 0:
        return 0
    in_use = hot.capacity_bytes - hot.free_bytes
    if in_use <= high_water * hot.capacity_bytes:
        return 0
    return math.ceil(in_use - low_water * hot.capacity_bytes)


def eviction_plan(files: Iterable[StoredFile], to_free: int, now: float, idle_s: float, limit: int) -> list[StoredFile]:
    """Variants, least recently read first, until ``to_free`` bytes are covered or ``limit`` files chosen;
    originals are never chosen, nor a variant read in the last ``idle_s``."""
    if to_free <= 0 or limit <= 0:
        return []
    variants = sorted(
        (f for f in files if f.name not in NOT_VARIANTS and now - f.last_read >= idle_s), key=lambda f: f.last_read
    )
    plan: list[StoredFile] = []
    freed = 0
    for f in variants:
        if freed >= to_free or len(plan) >= limit:
            break
        plan.append(f)
        freed += f.bytes
    return plan


def cold_candidates(
    files: Iterable[StoredFile], now: float, cold_after_days: float, idle_s: float, limit: int
) -> list[StoredFile]:
    """Hot originals not read for ``cold_after_days``, least recently read first. A deduplicated original
    (hard-linked by several images) stays hot: moving one link would store its bytes twice."""
    cutoff = now - max(cold_after_days * DAY_S, idle_s)
    old = sorted(
        (f for f in files if f.name == ORIGINAL and f.links == 1 and f.last_read <= cutoff), key=lambda f: f.last_read
    )
    return old[: max(0, limit)]


def promotions(cold_reads: dict[str, int], min_reads: int, limit: int) -> list[str]:
    """Cold originals read at least ``min_reads`` times in the window, most read first (0: never promote)."""
    if min_reads <= 0:
        return []
    hot = sorted((n, i) for i, n in cold_reads.items() if n >= min_reads)
    return [image_id for _n, image_id in reversed(hot)][: max(0, limit)]
