"""A replicator context over a real object store in a temp dir, with no database, bus or HTTP session behind it:
the unit tests here replace the few database calls they reach (the integration tests cover the real ones)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from common.config import NodeSettings, ReplicatorSettings, Settings
from replicator.jobs import ReplicatorContext
from storage_node.objects.store import Store

NODE_ID = "eu-west-1"


@pytest.fixture
def ctx(tmp_path: Path) -> ReplicatorContext:
    store = Store(tmp_path / "data")
    store.prepare()
    settings = Settings(node=NodeSettings(node_id=NODE_ID), replicator=ReplicatorSettings(concurrency=2))
    # No pool and no session: a test that reaches either fails loudly (None has no attributes).
    return ReplicatorContext(settings, cast(Any, None), store, cast(Any, None))
