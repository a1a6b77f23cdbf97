"""The benchmarks at a tiny size: correctness of what they report, never timing."""

from __future__ import annotations

import os
import shutil

import pytest

from fleetlab.bench.lookup import lookup
from fleetlab.bench.pure import BENCHMARKS
from fleetlab.bench.scale import scale
from fleetlab.bench.scheduler import scheduler

pytestmark = pytest.mark.etcd


@pytest.fixture(scope="module")
def tiny_scale() -> dict:
    if shutil.which("etcd") is None:
        pytest.fail("etcd binary not found: run the README's test command (it installs etcd-server)")
    # with the agents' niceness and an etcd flag (test_scale_agents_niceness_and_etcd_options):
    # one scale run for every check here, not a second run (an etcd and its agents) for those two
    return scale(machines=10, units=100, connections=3, timeout=120, idle_seconds=0, single_starts=3,
                 agents_nice=5, etcd_options=("--backend-batch-interval=10ms",))


def test_scale_places_and_runs_every_unit(tiny_scale):
    result = tiny_scale
    assert (result["machines"], result["units"], result["connections"]) == (10, 100, 3)
    verified = result["verified"]  # read back from etcd after the run: 100 + 3 started singly
    assert verified["placed"] == verified["active"] == verified["states"] == 103
    assert verified["machines_used"] == 10
    assert (verified["min_per_machine"], verified["max_per_machine"]) == (10, 11)  # least loaded
    assert result["engine"]["placements"] == 100  # the bulk run, before the single starts
    assert result["engine"]["passes"] >= 1 and result["engine"]["transactions"] >= 1
    assert result["start_one_unit_seconds"]["count"] == 3


def test_scale_traffic_adds_up(tiny_scale):
    traffic = tiny_scale["etcd_traffic"]
    roles = ("engine", "agents", "client")
    for field in ("requests", "bytes_sent", "bytes_received"):
        assert traffic["total"][field] == sum(traffic[r][field] for r in roles)
    # the client wrote every job and body: at least the bodies' bytes went out
    assert traffic["client"]["by_method"]["KV/Txn"]["sent"] == 2  # 100 units, 60 per transaction
    assert traffic["client"]["bytes_sent"] > 100 * len("[Service]\nExecStart=/bin/sleep infinity\n")
    # each agent read its share (Txn) and published states; the engine wrote the schedule
    assert traffic["agents"]["by_method"]["KV/Txn"]["sent"] >= 10 * 2
    assert traffic["engine"]["by_method"]["KV/Txn"]["sent"] >= 2
    assert tiny_scale["total_seconds"] >= tiny_scale["placed_seconds"] > 0


def test_scale_run_starts_with_every_watch_in_place(tiny_scale):
    # each agent's three watches exist (and are caught up) before the clock starts: no watch is
    # created during the measured run
    assert tiny_scale["etcd_watchers_at_start"] >= 3 * tiny_scale["machines"]
    assert tiny_scale["etcd_traffic"]["agents"]["by_method"].get("Watch/Watch", {}).get("sent", 0) == 0


def test_scale_agents_niceness_and_etcd_options(tiny_scale):
    result = tiny_scale
    assert result["agents_nice"] == 5
    assert result["agents_niceness_observed"] == [min(19, os.nice(0) + 5)]  # added to the inherited one
    assert result["etcd_options"] == ["--backend-batch-interval=10ms"]
    assert result["verified"]["active"] == 103
    with pytest.raises(Exception, match="etcd"):  # the flags reach etcd: an unknown one stops it
        scale(machines=1, units=1, timeout=30, idle_seconds=0, single_starts=0, etcd_options=("--no-such-flag",))


def test_scheduler_benchmark_places_everything():
    result = scheduler(machines=20, units=200, repeat=1)
    assert result["global_units"] > 0  # globals are not placed, they count in every load
    assert result["placements"] == result["units"] - result["global_units"]
    assert result["unschedulable"] == 0
    assert set(BENCHMARKS) == {"lookup", "scale", "scheduler"}


def test_lookup_benchmark_checks_its_answers():
    result = lookup(units=300, machines=7, samples=4)
    assert (result["units"], result["machines"], result["samples"], result["verified"]) == (300, 7, 4, 4)
    assert all(result[k] > 0 for k in ("unit_by_name_ms", "unit_by_name_with_schedule_scan_ms", "wait_check_ms",
                                       "whole_cluster_ms"))
