"""The examples of docs/sdk.md, run as written (every ```python block, in order, in one namespace) against a
real three-region cluster, so the SDK's documentation cannot drift from what it does."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import shutil
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import TestCluster
from tests.hostile import truncated_jpeg

SDK_DOC = Path(__file__).resolve().parents[2] / "docs" / "sdk.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def doc_blocks() -> list[str]:
    blocks = BLOCK.findall(SDK_DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 8, "docs/sdk.md lost its examples"
    return blocks


async def test_the_sdk_docs_examples_run(
    cluster: TestCluster,
    testdata: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    work = tmp_path / "app"
    work.mkdir()
    (work / "photo.jpg").write_bytes((testdata / "chelsea_gps.jpg").read_bytes())
    (work / "notes.txt").write_text("meeting notes, not an image\n")
    (work / "cut.jpg").write_bytes(truncated_jpeg(testdata / "chelsea_gps.jpg"))
    monkeypatch.chdir(work)
    monkeypatch.setenv("MINICDN_QUERY_URL", cluster.query_url)
    monkeypatch.setenv("MINICDN_API_KEY", cluster.api_key)

    ns: dict[str, Any] = {"__name__": "sdk_docs"}

    def run_all() -> None:
        for number, block in enumerate(doc_blocks(), 1):
            exec(compile(block, f"docs/sdk.md block {number}", "exec"), ns)

    # The cluster serves on this test's event loop; the blocking examples run on another thread.
    await asyncio.to_thread(run_all)
    out = capsys.readouterr().out

    image = ns["image"]
    assert (image.status, image.format, image.width, image.height) == ("ready", "jpeg", 1804, 1200)
    assert image.tags == ("cat", "holiday") and image.metadata == {"album": "summer"}
    assert ns["avatar"].visibility == "private" and ns["avatar"].status == "ready"
    lines = out.splitlines()
    assert lines[2] in ("uploaded", "processing", "ready")  # wait=False: what the node had done by then
    assert lines[3] == "ready private"
    variants = ns["variants"]
    # Each asked width is served by a configured variant, listed under its real width (never above the image's).
    assert len(variants.widths) >= 2 and max(variants.widths) <= 1804
    for width in variants.widths:
        assert f" {width}w" in variants.srcset
    assert variants.srcset in ns["html"] and variants.src in ns["html"]
    assert ns["refused"].status == 415 and ns["refused"].code == "unsupported_type"
    assert ns["rejected"].code == "rejected" and "truncated" in ns["rejected"].reason
    assert "404 not_found" in out
    assert image.id in [i.id for i in ns["cats"]]
    assert image.id in [i.id for i in ns["page"].images]
    assert len(ns["batch"]) == 3
    assert "deleted" in lines and lines[-1] == "ready"  # the delete example, then the patient client's get


def readme_app_section() -> str:
    text = (SDK_DOC.parents[1] / "README.md").read_text(encoding="utf-8")
    start = text.index("## Use it from your app")
    return text[start : text.index("\n## ", start + 1)]


async def test_the_readme_app_examples_run(
    cluster: TestCluster, testdata: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's "Use it from your app": the curl walk-through (bash) and the Python snippet, as written."""
    section = readme_app_section()
    (shell,) = re.findall(r"^```sh\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)
    (python,) = BLOCK.findall(section)
    assert shutil.which("curl"), "the README's walk-through needs curl"
    (tmp_path / "photo.jpg").write_bytes((testdata / "chelsea_gps.jpg").read_bytes())
    env = {**os.environ, "MINICDN_QUERY_URL": cluster.query_url, "MINICDN_API_KEY": cluster.api_key}
    proc = await asyncio.create_subprocess_exec(
        "bash", "-euo", "pipefail", "-c", shell, cwd=tmp_path, env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    status, url = out.decode().splitlines()
    assert status == "uploaded" and re.fullmatch(r"http://127\.0\.0\.1:\d+/i/[a-z2-7]{22}/w\d+\.webp", url), url

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINICDN_QUERY_URL", cluster.query_url)
    monkeypatch.setenv("MINICDN_API_KEY", cluster.api_key)
    printed = io.StringIO()

    def run() -> None:
        with contextlib.redirect_stdout(printed):
            exec(compile(python, "README.md python", "exec"), {"__name__": "readme"})

    await asyncio.to_thread(run)
    first, tag = printed.getvalue().splitlines()
    image_id, width, height, url = first.split()
    assert (width, height) == ("1804", "1200") and f"/i/{image_id}/" in url
    srcset = re.fullmatch(r'<img src="http[^"]+" srcset="([^"]+)" sizes="[^"]+" alt="">', tag)
    assert srcset is not None, tag
    entries = srcset.group(1).split(", ")
    assert len(entries) >= 2 and all(re.fullmatch(r"http://\S+\.webp \d+w", e) for e in entries), entries
