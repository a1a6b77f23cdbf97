"""The README's main job (`fleet-lab demo`) on a real lab, torn down afterwards."""

from __future__ import annotations

import secrets

import pytest

from fleetlab.demo import DEMO_UNITS, run_demo
from fleetlab.lab import host_problem, list_labs

pytestmark = pytest.mark.lab


def test_demo_runs_every_unit_and_cleans_up():
    if host_problem():
        pytest.skip(host_problem())
    name = f"dm{secrets.token_hex(2)}"
    lines: list[str] = []
    run_demo(name, echo=lines.append, keep=False)
    text = "\n".join(lines)
    for unit in DEMO_UNITS:
        if unit.startswith("global"):
            assert f"Triggered global unit {unit} start" in text
        else:
            assert f"Unit {unit} launched on " in text
    # web@ instances conflict: three distinct machines; each sidekick next to its web@
    listing = text.split("$ fleetctl list-units")[1].split("$ fleet-lab exec")[0]
    rows = [line.split() for line in listing.strip().splitlines()[1:]]
    where = {r[0]: r[1] for r in rows}
    assert len({where[f"web@{i}.service"] for i in (1, 2, 3)}) == 3
    for i in (1, 2, 3):
        assert where[f"web-discovery@{i}.service"] == where[f"web@{i}.service"]
    assert sum(1 for r in rows if r[0] == "global-monitor.service") == 3
    assert name not in list_labs()
