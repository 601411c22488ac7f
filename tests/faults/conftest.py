"""Fixtures of the fault suite: one real `minicdn dev` cluster for the whole module, its background load and
the invariant checker; at the end, the table of every fault's figures, printed and written to
``<basetemp>/faults-summary.txt``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.faults.invariants import Checker, Figures, table
from tests.faults.load import Load
from tests.faults.rig import Rig, environment

# Fast, small settings for the children (MINICDN_* variables override their config files). Health
# (heartbeats, timeouts) and the scrubber keep the dev cluster's own settings: those are what is tested.
ENV = {
    "MINICDN_PIPELINE_WORKERS": "1",  # two cores for the whole cluster: one sandbox worker per pool per node
    "MINICDN_NODE_RENDER_THREADS": "1",
    "MINICDN_REPLICATOR_SWEEP_INTERVAL_S": "1.0",  # copies a lost event stood for are retried within seconds
    "MINICDN_REPLICATOR_SWEEP_AGE_S": "1.0",
}
# Small enough that the fill fault fills a node with a few dozen 1 MB uploads; large enough that the
# background load alone stays far from the provisioning headroom for the suite's few minutes.
NODE_CAPACITY_BYTES = 40_000_000


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: the fault suite (one real multi-process cluster; pytest -m faults)")


@dataclass
class Suite:
    rig: Rig
    load: Load
    check: Checker
    figures: list[Figures] = field(default_factory=list)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, geoip_db: str) -> Iterator[Suite]:
    state = tmp_path_factory.mktemp("faults") / "state"
    with environment(ENV):
        rig = Rig(state, geoip_db, NODE_CAPACITY_BYTES)
        load: Load | None = None
        figures: list[Figures] = []
        try:
            rig.start()
            load = Load(rig.query_url, rig.api_key)
            load.start()
            found = Suite(rig, load, Checker(rig, load), figures)
            yield found
        finally:
            if load is not None:
                load.stop()
            rig.stop()
            if figures and load is not None:
                ups, looks = load.uploads, load.lookups
                summary = table(figures) + (
                    f"\n\nload over the whole run: {len(ups)} uploads ({sum(u.acked and u.good for u in ups)} good "
                    f"ones acknowledged, {sum(not u.good for u in ups)} of bytes to refuse), {len(looks)} lookups "
                    f"({sum(x.probe for x in looks)} of them probes)"
                )
                path = tmp_path_factory.getbasetemp() / "faults-summary.txt"
                path.write_text(summary + "\n")
                print(f"\nFAULT SUITE FIGURES (also in {path}; cluster logs in {state / 'logs'}):\n{summary}")
