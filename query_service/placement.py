"""Pure placement: the member of an open set nearest to the uploader, among healthy nodes with room."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from common.geo import Point
from common.holders import Ranked, rank
from query_service.registry import NodeInfo


def place(
    nodes: Iterable[NodeInfo], uploader: Point, need_bytes: int, healthy: Callable[[NodeInfo], bool]
) -> Ranked[NodeInfo] | None:
    """``None`` when no node can take an upload of ``need_bytes`` right now. ``healthy`` is the registry's
    (``common.holders``' definition, damped); an upload also needs an open set, an `active` node and room."""
    candidates = [
        n for n in nodes if n.set_state == "open" and n.state == "active" and healthy(n) and n.free_bytes >= need_bytes
    ]
    ranked = rank(candidates, uploader)
    return ranked[0] if ranked else None
