"""`minicdn upload`, `minicdn images ls` and `minicdn delete` against a real three-region cluster: `file → id`
lines (or JSON) after the progress bars, a refused file reported with its code, a table that fits 80
columns with the search filters applied, and deletes."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from minicdn.cli.main import main
from tests.cluster import TestCluster


async def test_upload_list_and_delete_from_the_cli(
    cluster: TestCluster, testdata: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--query-url", cluster.query_url, "--api-key", cluster.api_key, "--state-dir", str(tmp_path)]
    photo = shutil.copy(testdata / "chelsea_gps.jpg", tmp_path / "photo.jpg")
    coins = shutil.copy(testdata / "coins_gray.png", tmp_path / "coins.png")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")

    async def run(*argv: str) -> tuple[int, str, str]:
        # main() runs its own event loop (asyncio.run); the cluster serves on this one.
        code = await asyncio.to_thread(main, [*argv, *flags])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = await run("upload", str(photo), str(notes), str(coins), "--tag", "cli", "--wait", "30")
    assert code == 1  # one file was refused
    lines = out.splitlines()
    assert [line.split(" → ")[0] for line in lines] == [str(photo), str(coins)]
    ids = [line.split(" → ")[1] for line in lines]
    assert all(re.fullmatch(r"[a-z2-7]{22}", i) for i in ids)
    assert f"{notes}: unsupported_type:" in err
    photo_id, coins_id = ids

    code, out, _err = await run("upload", str(photo), "--json", "--meta", "album=x", "--private", "--wait", "30")
    assert code == 0
    (row,) = json.loads(out)
    assert row["file"] == str(photo) and row["status"] == "ready"
    assert (row["format"], row["width"], row["height"]) == ("jpeg", 1804, 1200)
    private_id = row["image_id"]

    code, out, _err = await run("images", "ls", "--tag", "cli", "--status", "ready")
    assert code == 0
    table = out.splitlines()
    assert table[0].split() == ["id", "status", "size", "bytes", "created"]
    assert all(len(line) <= 80 for line in table), table
    listed = [line.split()[0] for line in table[1:]]
    assert listed == [coins_id, photo_id]  # newest first; the private upload has no tag
    assert "1804x1200 jpeg" in table[2] and "ready" in table[2]

    async def ls_json(*filters: str) -> list[dict[str, Any]]:
        code, out, _err = await run("images", "ls", "--json", *filters)
        assert code == 0
        return list(json.loads(out))

    assert [i["image_id"] for i in await ls_json("--format", "png")] == [coins_id]
    (refused,) = await ls_json("--tag", "cli", "--status", "rejected")  # notes.txt: listed with its reason
    assert refused["image_id"] not in ids and "unsupported" in refused["reason"].lower()
    assert [i["image_id"] for i in await ls_json("--meta", "album=x")] == [private_id]
    assert [i["image_id"] for i in await ls_json("--visibility", "private")] == [private_id]
    assert [i["image_id"] for i in await ls_json("--min-width", "1000", "--order", "oldest")] == [photo_id, private_id]
    assert [i["image_id"] for i in await ls_json("--limit", "1")] == [private_id]

    code, out, err = await run("delete", photo_id, coins_id)
    assert code == 0 and out.splitlines() == [f"{photo_id} deleted", f"{coins_id} deleted"]
    assert [i["image_id"] for i in await ls_json("--tag", "cli")] == [refused["image_id"]]
    code, out, err = await run("delete", "a" * 22)
    assert code == 1 and "not_found" in err
