"""The CPU and time budget of an upload, stage by stage, for the upload row of `minicdn bench --peers`.

Read from the nodes' own counters (``common.metrics.StageMetrics``: ``minicdn_stage_*`` on each node's
``/metrics``, the whole node whatever its number of processes) before and after a run, divided by the files of
the run: how often each stage ran per upload, its wall milliseconds and, where the node can measure it (a
thread's own clock, a sandbox worker's), its CPU milliseconds. Beside it the floor those figures imply: the
libvips work of processing alone (the same job the sandbox runs: decode check, eager variants), run here in
this process on files of the run, with the default pipeline settings.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

Counters = dict[str, dict[str, float]]  # stage -> {"runs", "wall", "cpu"}
FIELDS = {"minicdn_stage_runs": "runs", "minicdn_stage_seconds": "wall", "minicdn_stage_cpu_seconds": "cpu"}


async def read_stages(session: aiohttp.ClientSession, node_urls: list[str]) -> Counters:
    """The stage counters of every node, summed."""
    out: Counters = {}
    for url in node_urls:
        async with session.get(f"{url}/metrics") as resp:
            text = await resp.text()
        for family in text_string_to_metric_families(text):
            kind = FIELDS.get(family.name)
            if kind is None:
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    stage = out.setdefault(sample.labels["stage"], {"runs": 0.0, "wall": 0.0, "cpu": 0.0})
                    stage[kind] += sample.value
    return out


@dataclass(frozen=True)
class StageFigure:
    stage: str
    runs: float  # per upload
    wall_ms: float  # per upload
    cpu_ms: float | None  # per upload; None where the stage is awaited (no CPU of its own to read)


def per_upload(before: Counters, after: Counters, uploads: int) -> list[StageFigure]:
    figures = []
    for stage in sorted(after):
        a, b = after[stage], before.get(stage, {"runs": 0.0, "wall": 0.0, "cpu": 0.0})
        runs = a["runs"] - b["runs"]
        if runs <= 0 or not uploads:
            continue
        cpu = a["cpu"] - b["cpu"]
        timed_cpu = stage.startswith("sandbox:") or cpu > 0
        wall = a["wall"] - b["wall"]
        figures.append(
            StageFigure(stage, runs / uploads, wall / uploads * 1000, cpu / uploads * 1000 if timed_cpu else None)
        )
    return figures


def median_figures(runs: list[list[StageFigure]]) -> list[StageFigure]:
    """Stage by stage, the median of each figure over the runs."""
    stages = sorted({f.stage for run in runs for f in run})
    out = []
    for stage in stages:
        mine = [f for run in runs for f in run if f.stage == stage]
        cpus = [f.cpu_ms for f in mine if f.cpu_ms is not None]
        out.append(
            StageFigure(
                stage,
                statistics.median(f.runs for f in mine),
                statistics.median(f.wall_ms for f in mine),
                statistics.median(cpus) if cpus else None,
            )
        )
    return out


def libvips_floor(files: list[bytes], samples: int = 16) -> dict[str, float]:
    """Blocking: the processing job (``storage_node.analyse``) on ``samples`` of ``files`` in this process, with
    the default pipeline settings: CPU milliseconds per upload by step, and ``job`` for the whole job."""
    import hashlib

    import pyvips

    from common.config import PipelineSettings
    from storage_node.analyse import analyse
    from storage_node.render import RenderOptions
    from storage_node.validate import restrict_loaders

    restrict_loaders()
    pyvips.cache_set_max(0)
    pipe = PipelineSettings()
    render = asdict(RenderOptions.from_settings(pipe))
    chosen = files[:samples]
    totals: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="minicdn-floor-") as tmp:
        for i, body in enumerate(chosen):
            path = Path(tmp) / f"{i}.jpg"
            path.write_bytes(body)
            job = {
                "path": str(path),
                "sha256": hashlib.sha256(body).hexdigest(),
                "bytes": len(body),
                "max_pixels": 100_000_000,
                "max_frames": 100,
                "keep_gps": False,
                "render": render,
                "eager": [[name, str(Path(tmp) / f"{i}-{name}")] for name in pipe.eager_variants],
            }
            for step, cpu_s in analyse(job)["cpu_s"].items():  # ("job": the whole of it, as in a worker)
                totals[step] = totals.get(step, 0.0) + cpu_s
    return {step: seconds / len(chosen) * 1000 for step, seconds in totals.items()} if chosen else {}


async def floor_of(files: list[bytes]) -> dict[str, float]:
    return await asyncio.to_thread(libvips_floor, files)


def budget_json(
    stages: list[StageFigure], processes_ms: dict[str, float], rate: float | None, floor: dict[str, float]
) -> dict[str, Any]:
    """The budget as the row's ``budget`` (``--json``; ``print_budget`` shows it). ``processes_ms``: each server's
    CPU milliseconds per upload (the row's CPU s per 1,000 files); ``rate``: the row's files/s."""
    return {
        "rate_per_s": None if rate is None else round(rate, 1),
        "processes_cpu_ms": {k: round(v, 3) for k, v in processes_ms.items()},
        "stages": {
            f.stage: {
                "runs_per_upload": round(f.runs, 3),
                "wall_ms": round(f.wall_ms, 3),
                "cpu_ms": None if f.cpu_ms is None else round(f.cpu_ms, 3),
            }
            for f in stages
        },
        "libvips_floor_cpu_ms": {k: round(v, 3) for k, v in floor.items()},
    }


def print_budget(budget: dict[str, Any], console: Console) -> None:
    cores = os.cpu_count() or 1
    processes: dict[str, float] = budget["processes_cpu_ms"]
    rate = budget["rate_per_s"]
    total = sum(processes.values())

    def share(ms: float | None) -> str:
        return f"{ms / total:.0%}" if ms is not None and total else ""

    table = Table(title="upload budget, per upload (medians of the runs); share: of all the CPU an upload costs")
    for col in ("where", "runs", "wall ms", "CPU ms", "share"):
        table.add_column(col, justify="left" if col == "where" else "right")
    for name, ms in sorted(processes.items(), key=lambda kv: -kv[1]):
        machine = f", {ms * rate / (cores * 1000):.0%} of the machine" if rate else ""
        table.add_row(f"process: {name}", "", "", f"{ms:.2f}", share(ms) + machine)
    table.add_section()
    for stage, f in budget["stages"].items():
        cpu = f["cpu_ms"]
        table.add_row(
            f"stage: {stage}",
            f"{f['runs_per_upload']:.2f}",
            f"{f['wall_ms']:.2f}",
            "-" if cpu is None else f"{cpu:.2f}",
            share(cpu),
        )
    table.add_section()
    for step, ms in budget["libvips_floor_cpu_ms"].items():
        table.add_row(f"libvips floor: {step}", "", "", f"{ms:.2f}", share(ms))
    console.print(table)
