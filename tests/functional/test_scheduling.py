"""fleet's scheduling scenarios on a 3-node lab (functional/scheduling_test.go, metadata_test.go):
conflicts, multiple conflicts, Replaces, MachineID pins, metadata templates with %i, global
units and conflicting global units. Every placement is checked in fleet (list-units) and in
systemd on every node.
"""

from __future__ import annotations

import pytest

from _functional import unit_body, wait_for

pytest_plugins = ["fleetlab.pytest_plugin"]
pytestmark = pytest.mark.lab(nodes=3, wait_fleetd=True, agent_ttl="3s")


def test_conflicts_five_on_three_machines(fleet):
    names = [f"conflict.{i}.service" for i in range(5)]
    for name in names:
        fleet.ctl("start", "--no-block", fleet.write(name, unit_body(name, xfleet=["Conflicts=conflict*"])))
    assert sorted(fleet.unit_files()) == names
    fleet.wait_active(3)
    fleet.barrier()
    placed = fleet.single(fleet.wait_active(3))
    assert len(set(placed.values())) == 3, f"3 active units not on 3 distinct machines: {placed}"
    waiting = sorted(set(names) - set(placed))
    assert all(fleet.unit_files()[n].machine_id is None for n in waiting)
    where = fleet.copies(names)
    assert sorted(len(v) for v in where.values()) == [0, 0, 1, 1, 1], where
    assert {where[n][0] for n in placed} == {n.name for n in fleet.lab.nodes}


def test_multiple_conflicts_space_separated_and_repeated(fleet):
    """Four pairwise-conflicting units on three machines: exactly three run. The conflicts are
    only declared by one side of each pair, some space-separated on one line, some on repeated
    lines; if either syntax were lost, two units could share a machine and four would run."""
    units = {
        "multi-a.service": ["Conflicts=multi-b.service multi-c.service multi-d.service"],
        "multi-b.service": ["Conflicts=multi-c.service", "Conflicts=multi-d.service"],
        "multi-c.service": ["Conflicts=multi-d.service"],
        "multi-d.service": [],
    }
    paths = [fleet.write(name, unit_body(name, xfleet=x)) for name, x in units.items()]
    fleet.ctl("start", "--no-block", *paths)
    fleet.wait_active(3)
    fleet.barrier()
    placed = fleet.single(fleet.wait_active(3))
    assert len(set(placed.values())) == 3, placed
    running = fleet.copies(list(units))
    assert sum(len(v) for v in running.values()) == 3 and all(len(v) <= 1 for v in running.values()), running


def test_replaces_moves_the_replaced_unit(fleet):
    """fleet's TestScheduleReplace, sharpened: the replacer is sent to the replaced unit's
    machine (by hostname metadata), and the replaced unit moves to another machine."""
    fleet.ctl("start", fleet.write("replace.0.service", unit_body("replace 0")))
    old = fleet.single(fleet.wait_active(1))["replace.0.service"]
    host = fleet.node_of(old)
    kick = fleet.write("replace-kick.service", unit_body(
        "kick", xfleet=["Replaces=replace.0.service", f"MachineMetadata=hostname={host.name}"]))
    fleet.ctl("start", "--no-block", kick)
    assert sorted(fleet.unit_files()) == ["replace-kick.service", "replace.0.service"]

    def moved():
        placed = fleet.single(fleet.active())
        return placed if len(placed) == 2 and placed["replace.0.service"] != old else None

    placed = wait_for("replace.0 moved away from the replacer's machine", moved)
    assert placed["replace-kick.service"] == old
    where = fleet.wait_runs_once(["replace.0.service", "replace-kick.service"])
    assert where["replace-kick.service"] == host.name
    assert where["replace.0.service"] != host.name


def test_machine_id_pins(fleet):
    """fleet's TestScheduleConditionMachineID with a template: pin@<machine ID> runs there."""
    fleet.ctl("submit", fleet.write("pin@.service", unit_body("pinned to %i", xfleet=["MachineID=%i"])))
    machines = sorted(fleet.machines())
    for machine_id in reversed(machines):
        fleet.ctl("start", f"pin@{machine_id}.service")
    # the short (8-character) machine ID works too
    fleet.ctl("start", f"pin@{machines[0][:8]}.service")
    placed = fleet.single(fleet.wait_active(4))
    expected = {f"pin@{m}.service": m for m in machines} | {f"pin@{machines[0][:8]}.service": machines[0]}
    assert placed == expected
    where = fleet.assert_runs_once(list(expected))
    assert all(where[n] == fleet.node_of(m).name for n, m in expected.items())
    # a machine that does not exist: never scheduled
    failed = fleet.ctl("start", "--block-attempts=4", "pin@0123456789abcdef0123456789abcdef.service", check=False)
    assert failed.returncode == 1
    assert fleet.unit_files()["pin@0123456789abcdef0123456789abcdef.service"].machine_id is None


def test_metadata_template_with_instance_specifier(fleet):
    """fleet's TestTemplatesWithSpecifiersInMetadata: MachineMetadata=hostname=%i."""
    fleet.ctl("submit", fleet.write("metadata@.service", unit_body(
        "metadata %i", xfleet=["MachineMetadata=hostname=%i"])))
    nodes = fleet.lab.nodes
    for node in reversed(nodes):
        fleet.ctl("start", f"metadata@{node.name}.service")
    placed = fleet.single(fleet.wait_active(3))
    assert placed == {f"metadata@{n.name}.service": n.machine_id for n in nodes}
    assert fleet.assert_runs_once(list(placed)) == {f"metadata@{n.name}.service": n.name for n in nodes}
    failed = fleet.ctl("start", "--block-attempts=10", "metadata@invalid.service", check=False)
    assert failed.returncode == 1, failed.stdout
    assert "timed out waiting for unit metadata@invalid.service" in failed.stderr
    assert fleet.unit_files()["metadata@invalid.service"].machine_id is None
    assert fleet.copies(["metadata@invalid.service"]) == {"metadata@invalid.service": []}


def test_global_units(fleet):
    """fleet's TestScheduleGlobalUnits: 2 normal units + 1 global unit on 3 nodes = 5 active."""
    hello = fleet.write("hello.service", unit_body("Hello World"))
    goodbye = fleet.write("goodbye.service", unit_body("Goodbye World"))
    fleet.ctl("start", "--no-block", hello, goodbye)
    fleet.wait_active(2)
    out = fleet.ctl("start", fleet.write("global.service", unit_body("global", xfleet=["Global=true"]))).stdout
    assert "Triggered global unit global.service start" in out
    active = fleet.wait_active(5)
    assert sorted(active["global.service"]) == sorted(fleet.machines())
    assert fleet.copies(["global.service"])["global.service"] == sorted(n.name for n in fleet.lab.nodes)
    fleet.assert_runs_once(["hello.service", "goodbye.service"])
    row = fleet.unit_files()["global.service"]
    assert row.is_global and row.machine_id is None
    listed = fleet.ctl("list-unit-files", "--no-legend", "--fields", "unit,state,target").stdout
    assert ["global.service", "-", "global"] in [line.split() for line in listed.splitlines()]

    if fleet.ctl("restart", "--help", check=False).returncode == 0:  # fleet v1.0.0's restart
        pids = {n.name: fleet.systemd(n, ["global.service"], "MainPID")["global.service"] for n in fleet.lab.nodes}
        out = fleet.ctl("restart", "global.service").stdout
        assert "Triggered global unit global.service restart" in out
        wait_for("global unit restarted on every machine", lambda: all(
            fleet.systemd(n, ["global.service"], "MainPID")["global.service"] not in ("0", pids[n.name])
            for n in fleet.lab.nodes))
        assert sorted(fleet.wait_active(5)["global.service"]) == sorted(fleet.machines())

    fleet.ctl("stop", "global.service")
    wait_for("global unit stopped on every machine",
             lambda: all(s.active == "inactive" for s in fleet.states() if s.name == "global.service"))
    assert fleet.copies(["global.service"])["global.service"] == []
    fleet.ctl("destroy", "global.service")
    wait_for("global unit gone from list-units", lambda: all(s.name != "global.service" for s in fleet.states()))
    assert set(fleet.active()) == {"hello.service", "goodbye.service"}


def test_global_conflicts_only_the_first_runs(fleet):
    """fleet's TestScheduleGlobalConflicts: of two conflicting global units only the first
    (in name order) runs, on every machine."""
    first = fleet.write("conflict-global.1.service", unit_body(
        "global 1", xfleet=["Global=true", "Conflicts=conflict-global*"]))
    second = fleet.write("conflict-global.2.service", unit_body(
        "global 2", xfleet=["Global=true", "Conflicts=conflict-global*"]))
    fleet.ctl("start", first)
    fleet.wait_active(3)
    fleet.ctl("start", second)
    for node in fleet.lab.nodes:  # every agent has run a pass since the second one exists
        fleet.barrier(machine_metadata=f"hostname={node.name}")
    active = fleet.wait_active(3)
    assert list(active) == ["conflict-global.1.service"]
    where = fleet.copies(["conflict-global.1.service", "conflict-global.2.service"])
    assert where == {"conflict-global.1.service": sorted(n.name for n in fleet.lab.nodes),
                     "conflict-global.2.service": []}
