"""Network partitions on a 4-node lab (fleet's TestSingleNodeConnectivityLoss, #1289, #1361).

The partitioned node is mostly node 4, which runs no etcd member (the lab's three members are
on nodes 1-3), so the partition cuts one fleetd off a healthy etcd cluster; it is also made
not to be the engine leader (a leader partition is the leader tests' subject). One test cuts
off node 1 instead, whose etcd member every fleetd is connected to at first.

- Shorter than agent_ttl: nothing happens. systemd on the node keeps every unit exactly as it
  was (same main PIDs), nothing is rescheduled, the machine never leaves.
- Longer than agent_ttl: the machine expires, its units start elsewhere, and the partitioned
  agent stops its non-global units once its lease must have expired (global units keep
  running). After the heal every unit runs exactly once, checked in systemd on every node.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from _functional import unit_body, wait_for

pytest_plugins = ["fleetlab.pytest_plugin"]
TTL = 6.0
pytestmark = pytest.mark.lab(nodes=4, wait_fleetd=True, agent_ttl=f"{TTL:g}s")

SHORT = 1.5  # seconds of partition, well below the TTL (keep-alives every TTL/3)


def cut_node(fleet):
    """Node 4, after making sure it is not the engine leader (a fleetd restart resigns)."""
    node = fleet.lab.node(4)
    if wait_for("an engine leader", fleet.leader) == node.machine_id:
        node.exec(["systemctl", "restart", "fleetd.service"], timeout=120)
        wait_for("another engine leader", lambda: (lambda l: l if l and l != node.machine_id else None)(fleet.leader()))
        fleet.wait_machines(4)
    return node


def test_connectivity_loss_shorter_than_ttl_changes_nothing(fleet):
    node = cut_node(fleet)
    pin = [f"MachineMetadata=hostname={node.name}"]
    fleet.ctl("submit", fleet.write("single-inactive.service", unit_body("inactive", xfleet=pin)))
    fleet.ctl("load", fleet.write("single-loaded.service", unit_body("loaded", xfleet=pin)))
    fleet.ctl("start", fleet.write("single-launched.service", unit_body("launched", xfleet=pin)),
              fleet.write("elsewhere.service", unit_body("elsewhere")))
    fleet.ctl("start", fleet.write("global-all.service", unit_body("global", xfleet=["Global=true"])))
    fleet.wait_active(2 + 4)
    local = ["single-loaded.service", "single-launched.service", "global-all.service"]
    props = ("ActiveState", "SubState", "UnitFileState", "MainPID")
    before = {p: fleet.systemd(node, local, p) for p in props}
    assert before["ActiveState"] == {"single-loaded.service": "inactive", "single-launched.service": "active",
                                     "global-all.service": "active"}
    files_before = fleet.unit_files()
    since = fleet.revision()

    node.partition()
    cut_at = time.monotonic()
    try:
        time.sleep(SHORT)  # the partition's length is the scenario, not a wait for a result
    finally:
        node.heal()
    assert time.monotonic() - cut_at < TTL / 2

    fleet.barrier(machine_metadata=f"hostname={node.name}")  # its agent and the engine ran a pass
    assert {p: fleet.systemd(node, local, p) for p in props} == before
    assert fleet.unit_files() == files_before
    assert len(fleet.machines()) == 4
    schedule_changes = [e for e in fleet.history("schedule/", since) if "zz-barrier" not in e["key"]]
    assert schedule_changes == [], f"the engine rescheduled: {schedule_changes}"
    log = node.exec(["journalctl", "--no-pager", "-u", "fleetd.service"]).stdout
    assert f"started on machine {node.machine_id}" in log  # the log is there, so its silence counts
    assert "lease lost" not in log and "cut off from etcd" not in log


def test_partition_longer_than_ttl_and_heal_runs_each_unit_once(fleet):
    node = cut_node(fleet)
    names = [f"part.{i}.service" for i in range(4)]
    fleet.ctl("start", *[fleet.write(n, unit_body(n)) for n in names])  # one per machine
    fleet.ctl("start", fleet.write("part-pinned.service", unit_body(
        "pinned", xfleet=[f"MachineMetadata=hostname={node.name}"])))
    fleet.ctl("start", fleet.write("part-global.service", unit_body("global", xfleet=["Global=true"])))
    placed = fleet.single({n: m for n, m in fleet.wait_active(5 + 4).items() if n != "part-global.service"})
    assert sorted(placed.values()).count(node.machine_id) == 2, placed  # one part.N and the pinned unit
    (moving,) = [n for n in names if placed[n] == node.machine_id]
    fleet.assert_runs_once(names + ["part-pinned.service"])

    node.partition()
    cut_at = time.monotonic()
    try:
        fleet.wait_machines(3, timeout=TTL + 15)
        gone = time.monotonic() - cut_at
        elsewhere = wait_for(f"{moving} active on another machine",
                             lambda: (lambda m: m if m and node.machine_id not in m else None)(
                                 fleet.active().get(moving)), timeout=15)
        failover = time.monotonic() - cut_at
        # the partitioned agent, cut off for longer than its lease, stops its non-global units
        wait_for("the partitioned agent stopped its non-global units",
                 lambda: set(fleet.systemd(node, [moving, "part-pinned.service"]).values()) <= {"inactive"},
                 timeout=TTL + 15)
        stopped = time.monotonic() - cut_at
        assert fleet.systemd(node, ["part-global.service"]) == {"part-global.service": "active"}
        assert fleet.copies([moving]) == {moving: [fleet.node_of(elsewhere[0]).name]}
        assert fleet.copies(["part-pinned.service"]) == {"part-pinned.service": []}  # it cannot run elsewhere
    finally:
        node.heal()

    fleet.wait_machines(4, timeout=TTL + 15)
    where = fleet.wait_runs_once(names + ["part-pinned.service"], timeout=20)
    assert where[moving] != node.name
    assert where["part-pinned.service"] == node.name
    assert fleet.copies(["part-global.service"]) == {"part-global.service": [n.name for n in fleet.lab.nodes]}
    final = fleet.single({n: m for n, m in fleet.wait_active(5 + 4).items() if n != "part-global.service"})
    assert {n: m for n, m in final.items() if n != moving} == {n: m for n, m in placed.items() if n != moving}
    fleet.barrier()
    fleet.assert_runs_once(names + ["part-pinned.service"])
    # from the journals (one host clock): when the new copy started and the old one stopped
    new_start = journal_time(fleet.node_of(elsewhere[0]), f"agent: start {moving}")
    old_stop = journal_time(node, "lease lost; stopping")
    print(f"\nFIGURE partition of one node (agent_ttl={TTL:g}s): machine gone after {gone:.1f}s, unit active "
          f"elsewhere after {failover:.1f}s, partitioned agent stopped its units after {stopped:.1f}s; "
          f"old copy stopped {old_stop - new_start:+.2f}s relative to the new copy's start (journals)")


def test_partition_while_etcd_keeps_the_lease_restarts_units_in_place(fleet):
    """The partitioned agent stops its units when its lease must have expired, but etcd may
    have kept the lease alive: it renews every lease when it elects a new raft leader, and a
    keep-alive whose answer was lost renews it too. Then the machine never left and nothing was
    moved, so after the heal the agent must carry on and start its units again (it used to wait
    forever for a new registration). The lease is kept alive from the host to make this exact."""
    node = cut_node(fleet)
    names = [f"keep.{i}.service" for i in range(4)]
    fleet.ctl("start", *[fleet.write(n, unit_body(n)) for n in names])
    fleet.ctl("start", fleet.write("keep-pinned.service", unit_body(
        "pinned", xfleet=[f"MachineMetadata=hostname={node.name}"])))
    placed = fleet.single(fleet.wait_active(5))
    local = sorted(n for n, m in placed.items() if m == node.machine_id)
    assert "keep-pinned.service" in local and len(local) == 2, placed
    since = fleet.revision()

    keeper = subprocess.Popen(["etcdctl", "lease", "keep-alive", f"{fleet.machine_lease(node.machine_id):x}"],
                              env={**os.environ, **fleet.lab.env()},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        node.partition()
        try:
            wait_for("the partitioned agent stopped its units",
                     lambda: set(fleet.systemd(node, local).values()) <= {"inactive"}, timeout=TTL + 15)
            assert len(fleet.machines()) == 4  # etcd kept the machine
        finally:
            node.heal()
        wait_for("its units running again", lambda: set(fleet.systemd(node, local).values()) == {"active"},
                 timeout=TTL + 15)
    finally:
        keeper.terminate()
        keeper.wait(timeout=10)
    fleet.barrier(machine_metadata=f"hostname={node.name}")
    assert fleet.single(fleet.wait_active(5)) == placed
    assert fleet.assert_runs_once(names + ["keep-pinned.service"]) == {
        n: fleet.node_of(m).name for n, m in placed.items()}
    moves = [e for e in fleet.history("schedule/", since) if "zz-barrier" not in e["key"]]
    assert moves == [], f"the engine moved units although the machine never left: {moves}"
    assert "alive after all" in node.exec(["journalctl", "--no-pager", "-u", "fleetd.service"]).stdout


def test_partition_of_an_etcd_member_moves_only_its_own_units(fleet):
    """Node 1 runs an etcd member, the first in every fleetd's endpoint list, so every fleetd
    is connected to it: cutting node 1 off must not cost the others their leases (they go on
    with the other members at once). Only node 1's unit moves; the others never stop."""
    node = fleet.lab.node(1)
    names = [f"member.{i}.service" for i in range(4)]
    fleet.ctl("start", *[fleet.write(n, unit_body(n)) for n in names])
    placed = fleet.single(fleet.wait_active(4))
    assert len(set(placed.values())) == 4
    (moving,) = [n for n, m in placed.items() if m == node.machine_id]
    staying = {n: fleet.node_of(m) for n, m in placed.items() if n != moving}
    pids = {n: fleet.systemd(host, [n], "MainPID")[n] for n, host in staying.items()}
    since = fleet.revision()

    node.partition()
    try:
        fleet.wait_machines(3, timeout=TTL + 15)
        wait_for(f"{moving} active elsewhere", lambda: (lambda m: m if m and node.machine_id not in m else None)(
            fleet.active().get(moving)), timeout=20)
        wait_for("node 1's agent stopped its unit", lambda: fleet.systemd(node, [moving])[moving] == "inactive",
                 timeout=TTL + 15)
    finally:
        node.heal()
    fleet.wait_machines(4, timeout=TTL + 30)
    where = fleet.wait_runs_once(names, timeout=20)
    assert where[moving] != node.name
    assert all(where[n] == host.name for n, host in staying.items())
    others = {n.machine_id for n in fleet.lab.nodes if n.index != 1}
    lost = [e for e in fleet.history("machines/", since)
            if e["type"] == "DELETE" and e["key"].split("/")[1] in others]
    assert lost == [], f"machines other than node 1 lost their presence: {lost}"
    moved = [e for e in fleet.history("schedule/", since) if e["key"].rpartition("/")[2] in staying]
    assert moved == [], f"units of machines that kept their lease were rescheduled: {moved}"
    # Not asserted: if etcd itself stays without a raft leader for longer than the TTL (node 1
    # may hold it; a loaded 2-core host can slow the election), the others cannot tell that
    # from being cut off and stop their units too; the new raft leader renews every lease, and
    # they start their units again in place (see the previous test). Printed when it happens.
    restarted = sorted(n for n, host in staying.items() if fleet.systemd(host, [n], "MainPID")[n] != pids[n])
    if restarted:
        print(f"\nNOTE etcd was unavailable longer than the TTL; restarted in place: {restarted}")


def journal_time(node, text: str) -> float:
    """Host-clock time of the last fleetd log line on `node` containing `text`."""
    log = node.exec(["journalctl", "--no-pager", "-o", "short-unix", "-u", "fleetd.service"]).stdout
    lines = [line for line in log.splitlines() if text in line]
    assert lines, f"{node.name}: no fleetd log line with {text!r}"
    return float(lines[-1].split()[0])
