"""`minicdn bootstrap-key`: the first admin key, created directly in Postgres."""

from __future__ import annotations

import asyncio

import pytest

from common.config import DatabaseSettings, Secret
from common.db.api_keys import lookup_key
from common.db.pool import open_pool
from minicdn.cli.main import main


def test_bootstrap_key_creates_an_admin_key(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MINICDN_DATABASE_URL", database_url)
    assert main(["bootstrap-key", "--name", "first-admin"]) == 0
    plaintext = capsys.readouterr().out.strip()

    async def look() -> object:
        async with open_pool(DatabaseSettings(url=Secret(database_url))) as pool:
            return await lookup_key(pool, plaintext)

    key = asyncio.run(look())
    assert key is not None and key.is_admin and key.name == "first-admin"  # type: ignore[attr-defined]


def test_bootstrap_key_needs_a_database(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MINICDN_DATABASE_URL", raising=False)
    assert main(["bootstrap-key"]) == 2
    assert "database.url" in capsys.readouterr().err
