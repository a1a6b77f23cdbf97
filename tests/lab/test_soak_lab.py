"""The chaos soak (fleetlab/soak.py) at CI size: a 4-node lab, 50+ units, every fault kind once
in a seeded order for 2.5 minutes of faults (about 4 minutes in all); no violation of the invariants checked from the nodes'
own systemd. SOAK_SEED and SOAK_MINUTES replay or lengthen it."""

from __future__ import annotations

import os

import pytest

from fleetlab.soak import KINDS, report_text, soak

pytestmark = [pytest.mark.lab, pytest.mark.soak]


# No xfail any more: the known violation of the 3rd session (seed 13 under heavy load, a long total
# etcd outage restarting in place the units of a machine whose fleetd had been SIGTERMed 10 s
# before) was a holding machine fencing on one round of silent peers (docs/reliability.md).
def test_chaos_soak_has_no_violation():
    seed = int(os.environ.get("SOAK_SEED", "13"))
    minutes = float(os.environ.get("SOAK_MINUTES", "2.5"))  # ~4 min with the lab's boot
    result = soak(seed=seed, minutes=minutes, log=print)
    print("\n" + "\n".join(report_text(result)))
    assert result["faults"] >= min(len(KINDS), 4), "too few faults injected to mean anything"
    assert result["violations"] == [], "\n".join(report_text(result))
