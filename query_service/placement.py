"""Pure placement: the member of an open set nearest to the uploader, among healthy nodes with room and not
behind on processing (``registry.over_backlog``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from common.geo import Point
from common.holders import Ranked, rank
from query_service.registry import NodeInfo, over_backlog


def place(
    nodes: Iterable[NodeInfo],
    uploader: Point,
    need_bytes: int,
    healthy: Callable[[NodeInfo], bool],
    *,
    backlog: bool = True,
) -> Ranked[NodeInfo] | None:
    """``None`` when no node can take an upload of ``need_bytes`` right now. ``healthy`` is the registry's
    (``common.holders``' definition, damped); an upload also needs an open set, an `active` node and room, and
    (unless ``backlog`` is False) a node not past its processing backlog."""
    candidates = [
        n
        for n in nodes
        if n.set_state == "open"
        and n.state == "active"
        and healthy(n)
        and n.free_bytes >= need_bytes
        and not (backlog and over_backlog(n))
    ]
    ranked = rank(candidates, uploader)
    return ranked[0] if ranked else None
