"""The two reliability probes of issue 13 on a 3-node lab (3 etcd members, agent_ttl 5 s):

- a total etcd outage (every member SIGSTOPped, then SIGCONTed) stops nothing and moves
  nothing: every unit keeps running on its node with the same main PID, checked in systemd on
  every node all along and after the engine ran passes again (the probe of the issue: before,
  every fleetd stopped its units and the engine then put them all on one machine);
- `systemctl stop fleetd` leaves no duplicate: the fence timer stops the stopped fleetd's units
  before its lease may expire, while the engine starts them elsewhere; no unit is ever active
  on two nodes (sampled in systemd); a fleetd restarted within the TTL keeps its units (same
  main PIDs) and the timer is gone.
"""

from __future__ import annotations

import time

import pytest

from _functional import unit_body, wait_for

pytest_plugins = ["fleetlab.pytest_plugin"]
TTL = 5.0
pytestmark = pytest.mark.lab(nodes=3, wait_fleetd=True, agent_ttl=f"{TTL:g}s")


def etcd_nodes(fleet):
    ips = {m.ip for m in fleet.lab.etcd_members}
    return [n for n in fleet.lab.nodes if n.ip in ips]


def signal_etcd(fleet, sig: str) -> None:
    for node in etcd_nodes(fleet):
        node.exec(["systemctl", "kill", "-s", sig, "fleetlab-etcd.service"])


def where_and_pids(fleet, names):
    """name -> (node name, MainPID) from systemd on every node; every unit must run once."""
    where = fleet.assert_runs_once(names)
    out = {}
    for node in fleet.running_nodes():
        mine = [n for n, host in where.items() if host == node.name]
        for name, pid in fleet.systemd(node, mine, "MainPID").items():
            out[name] = (node.name, pid)
    return out


def start_spread(fleet, prefix: str, count: int) -> list[str]:
    names = [f"{prefix}.{i}.service" for i in range(count)]
    fleet.ctl("start", *[fleet.write(n, unit_body(n, sleep=1)) for n in names])
    fleet.wait_active(count)
    fleet.wait_runs_once(names)
    return names


@pytest.mark.parametrize("seconds", [15, pytest.param(60, marks=pytest.mark.slow)])
def test_total_etcd_outage_stops_and_moves_nothing(fleet, seconds):
    names = start_spread(fleet, f"outage{seconds}", 6)
    before = where_and_pids(fleet, names)
    assert len({host for host, _ in before.values()}) == 3  # spread over the three machines
    signal_etcd(fleet, "SIGSTOP")
    try:
        until = time.monotonic() + seconds
        while time.monotonic() < until:  # all along, from the nodes' own systemd
            assert where_and_pids(fleet, names) == before, "a unit stopped or moved during the etcd outage"
            time.sleep(1.0)
    finally:
        signal_etcd(fleet, "SIGCONT")
    fleet.lab.wait_etcd_healthy(timeout=60)
    fleet.wait_machines(3, timeout=60)
    fleet.barrier()  # the engine and an agent ran a pass after the outage
    time.sleep(TTL)  # past any grace period and lease deadline
    fleet.barrier()
    after = where_and_pids(fleet, names)
    stopped = sum(1 for n in names if after[n][1] != before[n][1])
    moved = sum(1 for n in names if after[n][0] != before[n][0])
    print(f"\nFIGURE total etcd outage of {seconds}s (agent_ttl {TTL:g}s): units stopped = {stopped}, "
          f"moved = {moved} (of {len(names)})")
    assert after == before


def test_fleetd_stop_leaves_no_duplicate(fleet):
    names = start_spread(fleet, "stop", 6)
    before = where_and_pids(fleet, names)
    host = fleet.lab.node(before[names[0]][0])
    mine = sorted(n for n, (h, _) in before.items() if h == host.name)
    host.stop_fleetd()
    assert fleet.systemd(host, ["fleet-fence.timer"]) == {"fleet-fence.timer": "active"}
    samples = 0
    until = time.monotonic() + TTL + 20
    while time.monotonic() < until:
        where = fleet.copies(names)
        twice = {n: v for n, v in where.items() if len(v) > 1}
        assert not twice, f"active on two nodes after `systemctl stop fleetd`: {twice}"
        samples += 1
        if all(len(v) == 1 and v[0] != host.name for n, v in where.items() if n in mine):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"the stopped fleetd's units did not move: {fleet.copies(mine)}")
    assert set(fleet.systemd(host, mine).values()) <= {"inactive", "failed"}
    host.start_fleetd()
    fleet.wait_machines(3)
    fleet.wait_runs_once(names)
    wait_for("leftover unit files removed", lambda: not [n for n in fleet.fleet_units_on(host) if n in mine])
    print(f"\nFIGURE `systemctl stop fleetd`: {len(mine)} units moved, never active twice ({samples} samples)")


def test_fleetd_restart_within_the_ttl_keeps_its_units(fleet):
    names = start_spread(fleet, "restart", 6)
    before = where_and_pids(fleet, names)
    host = fleet.lab.node(before[names[0]][0])
    host.exec(["systemctl", "restart", "fleetd.service"], timeout=120)
    fleet.wait_machines(3)
    time.sleep(TTL + 1)  # past the moment the fence would have fired
    fleet.barrier()
    assert where_and_pids(fleet, names) == before
    assert fleet.systemd(host, ["fleet-fence.timer"]) == {"fleet-fence.timer": "inactive"}
