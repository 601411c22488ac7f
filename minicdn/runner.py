"""Run one component in the foreground (`minicdn storage-node|query-service|replicator --config FILE`) through
the composition root each service package keeps for its process."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from common import reqlog
from common.config import Settings


def run_storage_node(settings: Settings) -> None:
    from replicator.node_root import create_node_app

    node = settings.node
    web.run_app(
        create_node_app(settings),
        host=node.host,
        port=node.port,
        print=None,
        shutdown_timeout=10,
        handler_cancellation=True,
        **_access_log("storage-node"),
    )


def run_query_service(settings: Settings) -> None:
    from query_service.app import create_app

    query = settings.query
    web.run_app(
        create_app(settings),
        host=query.host,
        port=query.port,
        print=None,
        shutdown_timeout=10,
        handler_cancellation=True,
        **_access_log("query-service"),
    )


def _access_log(component: str) -> dict[str, Any]:
    """run_app arguments for the one-line-per-request log (common.reqlog)."""
    return {"access_log": reqlog.access_logger, "access_log_class": reqlog.access_logger_for(component)}


def run_replicator(settings: Settings) -> None:
    from replicator.standalone import run

    run(settings)
