"""The upload budget of `minicdn bench --peers` (minicdn.bench.budget): stage counters turned into figures per
upload, their medians over runs, and the libvips floor measured for real on JPEGs made here."""

from __future__ import annotations

from rich.console import Console

from minicdn.bench.budget import budget_json, libvips_floor, median_figures, per_upload, print_budget
from minicdn.bench.uploads import make_jpegs


def test_stage_counters_become_figures_per_upload() -> None:
    before = {"put:store": {"runs": 10.0, "wall": 1.0, "cpu": 0.1}}
    after = {
        "put:store": {"runs": 110.0, "wall": 3.0, "cpu": 0.3},
        "replica:fetch": {"runs": 200.0, "wall": 4.0, "cpu": 0.0},  # awaited: no CPU of its own
        "sandbox:job": {"runs": 100.0, "wall": 0.0, "cpu": 1.5},
        "idle": {"runs": 0.0, "wall": 0.0, "cpu": 0.0},  # did not run: left out
    }
    figures = {f.stage: f for f in per_upload(before, after, 100)}
    assert set(figures) == {"put:store", "replica:fetch", "sandbox:job"}
    store = figures["put:store"]
    assert (store.runs, round(store.wall_ms, 6), round(store.cpu_ms or 0, 6)) == (1.0, 20.0, 2.0)
    assert figures["replica:fetch"].runs == 2.0 and figures["replica:fetch"].cpu_ms is None
    assert figures["sandbox:job"].cpu_ms == 15.0
    second = per_upload({}, {"put:store": {"runs": 100.0, "wall": 4.0, "cpu": 0.4}}, 100)
    (median,) = [f for f in median_figures([list(figures.values()), second]) if f.stage == "put:store"]
    assert round(median.wall_ms, 6) == 30.0 and round(median.cpu_ms or 0, 6) == 3.0


def test_the_libvips_floor_is_measured_and_printed() -> None:
    floor = libvips_floor(make_jpegs(2), samples=2)
    assert floor["job"] > 0 and floor["decode check"] > 0
    assert {"pixels thumb", "encode jpg", "encode webp"} <= set(floor)  # the default eager variants, one crop
    assert floor["job"] >= floor["decode check"] + floor["pixels thumb"]
    budget = budget_json(
        per_upload({}, {"put:store": {"runs": 1.0, "wall": 0.01, "cpu": 0.001}}, 1), {"n1": 5.0}, 50.0, floor
    )
    console = Console(record=True, width=200)
    print_budget(budget, console)
    text = console.export_text()
    assert "process: n1" in text and "stage: put:store" in text and "libvips floor: job" in text
