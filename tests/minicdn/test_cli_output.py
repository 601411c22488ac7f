"""The CLI reads well anywhere: run as a real process with stdout a pipe (as in `minicdn status | grep eu-west`)
and `COLUMNS` set, against a real three-region cluster. At 80 columns no line is longer than 80 and every node
id, region and state appears whole, on one line per record; a wide terminal gets more columns; a very narrow one
gets one block per record; `--json` prints the documented shapes; every option has help; `minicdn bench`
deletes what it uploaded unless `--keep`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from minicdn.cli.main import build_parser
from tests.cluster import TestCluster


class Cli:
    def __init__(self, cluster: TestCluster, cwd: Path) -> None:
        self.flags = ["--query-url", cluster.query_url, "--api-key", cluster.api_key, "--state-dir", str(cwd)]
        self.cwd = cwd

    async def run(self, *argv: str, columns: int = 80, ok: bool = True) -> tuple[int, str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
        # A subprocess with a pipe for stdout: the same as `minicdn ... | grep`, and the cluster keeps serving
        # on this test's event loop meanwhile.
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",
            "-m",
            "minicdn.cli",
            *argv,
            *self.flags,
            env={**env, "COLUMNS": str(columns)},
            cwd=self.cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        code = proc.returncode
        assert code is not None
        if ok:
            assert code == 0, (argv, out.decode(), err.decode())
        return code, out.decode(), err.decode()

    async def json(self, *argv: str) -> Any:
        _code, out, _err = await self.run(*argv, "--json")
        return json.loads(out)


def assert_fits(text: str, width: int = 80) -> list[str]:
    lines = text.splitlines()
    assert lines and all(len(line) <= width for line in lines), "\n".join(lines)
    assert "…" not in text  # nothing cut
    return lines


def section(lines: list[str], title: str) -> list[str]:
    """The lines of one table of `minicdn status`: from its title to the next blank line."""
    start = lines.index(title) + 1
    end = lines.index("", start) if "" in lines[start:] else len(lines)
    return lines[start:end]


async def test_status_at_80_columns_in_a_pipe_wide_narrow_and_json(cluster: TestCluster, tmp_path: Path) -> None:
    cli = Cli(cluster, tmp_path)
    changed = await cli.json("node", "state", "eu-west-1", "readonly")
    assert changed["node_id"] == "eu-west-1" and changed["state"] == "readonly"

    data = await cli.json("status")
    assert {"nodes", "sets", "regions", "provisioning", "events"} <= set(data)
    nodes = {n["node_id"]: n for n in data["nodes"]}
    assert set(nodes) == {"us-east-1", "eu-west-1", "ap-southeast-1"}
    assert nodes["eu-west-1"]["state"] == "readonly" and nodes["eu-west-1"]["state_set_by"] == "operator"

    _code, out, _err = await cli.run("status")
    lines = assert_fits(out)
    table = section(lines, "nodes")
    assert table[0].split()[:6] == ["node", "region", "set", "state", "health", "used"]
    assert "heartbeat" not in table[0]  # left out at 80 columns, not squeezed into it
    for node_id, n in nodes.items():
        # `minicdn status | grep <region>`: the region's row names the node, its set and state, whole.
        grepped = [line for line in table if n["region"] in line.split()]
        assert len(grepped) == 1, table
        assert grepped[0].split()[:4] == [node_id, n["region"], n["set_id"], n["state"]]
    assert "(op)" in next(line for line in table if line.startswith("eu-west-1"))
    for region in ("us-east", "eu-west", "ap-southeast"):
        assert any(line.split()[0] == region for line in section(lines, "regions"))
    assert section(lines, "replication sets")[1].split()[:2] == ["set-1", data["sets"][0]["state"]]

    _code, wide, _err = await cli.run("status", columns=200)
    wide_header = section(wide.splitlines(), "nodes")[0]
    assert "heartbeat" in wide_header and "growth/day" in wide_header  # the full width is used

    _code, narrow, _err = await cli.run("status", columns=40)
    narrow_lines = narrow.splitlines()
    for node_id, n in nodes.items():  # one block per record: the identifying values still on one line
        assert any(line.split()[:4] == [node_id, n["region"], n["set_id"], n["state"]] for line in narrow_lines)

    repair = await cli.json("repair")
    assert {"under_replicated", "replicas_waiting", "by_node", "on_dead_nodes"} <= set(repair)


async def test_keys_upload_url_and_images_at_80_columns_and_json(
    cluster: TestCluster, testdata: Path, tmp_path: Path
) -> None:
    cli = Cli(cluster, tmp_path)
    made = await cli.json("keys", "create", "a shop with a rather long descriptive name", "--rate", "5")
    assert {"key_id", "app_id", "scopes", "api_key"} <= set(made) and made["api_key"].startswith("mk_")
    _code, out, _err = await cli.run("keys", "list")
    lines = assert_fits(out)
    assert lines[0].split()[:4] == ["key", "id", "name", "scopes"]
    row = next(line for line in lines if line.startswith(made["key_id"]))
    assert row.split()[1:3] == ["a", "shop"] and "active" in row.split() and made["api_key"] not in out
    listed = await cli.json("keys", "list")
    assert made["key_id"] in {k["key_id"] for k in listed["keys"]}
    revoked = await cli.json("keys", "revoke", made["key_id"])
    assert revoked["key_id"] == made["key_id"] and revoked["revoked_at"]
    _code, out, _err = await cli.run("keys", "list")
    assert "revoked" in next(line for line in out.splitlines() if line.startswith(made["key_id"])).split()

    shutil.copy(testdata / "chelsea_gps.jpg", tmp_path / "photo.jpg")
    _code, out, _err = await cli.run("upload", "photo.jpg", "--wait", "30")
    (line,) = assert_fits(out)
    name, image_id = line.split(" → ")
    assert name == "photo.jpg" and len(image_id) == 22
    (row_json,) = await cli.json("upload", "photo.jpg", "--tag", "second", "--wait", "30")
    assert row_json["file"] == "photo.jpg" and row_json["status"] == "ready" and row_json["width"] == 1804

    _code, out, _err = await cli.run("url", image_id, "--w", "300")
    (url_line,) = out.splitlines()
    assert url_line.startswith("http") and image_id in url_line
    found = await cli.json("url", image_id, "--w", "300")
    assert found["url"] == url_line and found["node_id"] in {"us-east-1", "eu-west-1", "ap-southeast-1"}

    _code, out, _err = await cli.run("images", "ls")
    lines = assert_fits(out)
    assert lines[0].split() == ["id", "status", "size", "bytes", "created"]
    assert {line.split()[0] for line in lines[1:]} == {image_id, row_json["image_id"]}
    images = await cli.json("images", "ls")
    assert [i["image_id"] for i in images] == [row_json["image_id"], image_id]


def test_every_option_has_help() -> None:
    missing = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), [])
    assert missing == []
    url = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["url"]
    text = url.format_help()
    assert "(default: auto)" in text and "--client-ip" in text and "--json" in text


async def test_bench_deletes_its_uploads_unless_keep(cluster: TestCluster, tmp_path: Path) -> None:
    cli = Cli(cluster, tmp_path)
    tiny = ("bench", "--uploads", "2", "--idle-uploads", "1", "--lookups", "4", "--gets", "4", "--concurrency", "2")
    run = await cli.json(*tiny)
    assert set(run["figures"]) >= {"uploads", "replication_idle", "lookups", "node_gets"}
    assert run["uploaded"] == 3 and run["removed"] == 3
    assert await cli.json("images", "ls") == []

    kept = await cli.json(*tiny, "--keep")
    assert kept["uploaded"] == 3 and kept["removed"] == 0
    assert len(await cli.json("images", "ls")) == 3
