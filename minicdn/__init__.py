"""What users run and import: the `minicdn` CLI, the dev cluster, the embedded servers, the benchmarks,
the process runner, and the Python SDK (`from minicdn import Client, AsyncClient`, see docs/sdk.md).
The services (common, storage_node, replicator, query_service) never import this package.

The SDK names are loaded on first use (PEP 562), so `import minicdn` stays free of aiohttp until a client
is asked for."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from minicdn.sdk.aio import AsyncClient
    from minicdn.sdk.errors import (
        Conflict,
        ConnectionFailed,
        Forbidden,
        InvalidImage,
        InvalidRequest,
        MinicdnError,
        NotFound,
        Quarantined,
        RateLimited,
        Rejected,
        ServerError,
        Timeout,
        TooLarge,
        Unauthorized,
        Unavailable,
        Unsupported,
    )
    from minicdn.sdk.models import Image, Page, Replica, Srcset
    from minicdn.sdk.retry import RetryPolicy
    from minicdn.sdk.sync import Client

_ERRORS = (
    "Conflict ConnectionFailed Forbidden InvalidImage InvalidRequest MinicdnError NotFound Quarantined "
    "RateLimited Rejected ServerError Timeout TooLarge Unauthorized Unavailable Unsupported"
).split()
_WHERE = {
    "AsyncClient": "minicdn.sdk.aio",
    "Client": "minicdn.sdk.sync",
    "Image": "minicdn.sdk.models",
    "Page": "minicdn.sdk.models",
    "Replica": "minicdn.sdk.models",
    "Srcset": "minicdn.sdk.models",
    "RetryPolicy": "minicdn.sdk.retry",
    **dict.fromkeys(_ERRORS, "minicdn.sdk.errors"),
}
__all__ = [
    "AsyncClient",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "Image",
    "InvalidImage",
    "InvalidRequest",
    "MinicdnError",
    "NotFound",
    "Page",
    "Quarantined",
    "RateLimited",
    "Rejected",
    "Replica",
    "RetryPolicy",
    "ServerError",
    "Srcset",
    "Timeout",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "Unsupported",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'minicdn' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value  # later look-ups skip this hook
    return value
