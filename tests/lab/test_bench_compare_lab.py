"""fleet-lab bench compare --project-only at a tiny size on a lab of its own: this project's rows
without the original fleet's binaries (timing is never asserted; the units must have come up,
or the scenarios raise)."""

from __future__ import annotations

from fleetlab.bench.compare import compare
from fleetlab.lab import list_labs

pytest_plugins = ["fleetlab.pytest_plugin"]


def test_compare_project_only_reports_this_projects_rows(monkeypatch):
    monkeypatch.setenv("FLEET_PEER_DIR", "/nonexistent")  # not needed, and not used
    result = compare(samples=1, burst=3, no_block=4, nodes=2, project_only=True, failover=False)
    assert "skipped" not in result and "fleet_v1" not in result
    figures = result["project"]
    assert set(figures) == {"list_units_p50_seconds", "start_one_p50_seconds", "burst_3_seconds",
                            "no_block_4_seconds", "start_one_etcd_driver_p50_seconds"}
    assert all(value > 0 for value in figures.values())
    assert result["lab"]["name"] not in list_labs()  # its lab is gone (other labs may come and go)


def test_compare_on_a_kept_lab_booted_with_the_defaults(lab_factory, monkeypatch):
    """`--keep-lab` on a lab as `fleet-lab up` boots it (TLS, client certificates): this
    project's fleetctl reaches node 1's API over https with the operator certificate (a plain
    http request to the TLS port was refused until the warm-up gave up after its timeout)."""
    monkeypatch.setenv("FLEET_PEER_DIR", "/nonexistent")
    lab = lab_factory(nodes=2, wait_fleetd=True)
    assert not lab.insecure
    result = compare(samples=1, burst=2, no_block=0, project_only=True, failover=False, keep_lab=lab.name,
                     timeout=120)
    figures = result["project"]
    assert set(figures) == {"list_units_p50_seconds", "start_one_p50_seconds", "burst_2_seconds",
                            "start_one_etcd_driver_p50_seconds"}
    assert all(value > 0 for value in figures.values())
    assert lab.name in list_labs()  # kept, as asked
