"""Placement beyond fleet, on a 3-node lab: resource-aware placement (MemoryMax=/CPUQuota=,
[X-Fleet] ReserveMemory=/ReserveCPU=), dynamic metadata (`fleetctl set-metadata`) for normal
and global units, and drain/undrain.

In the lab every node reports the host's CPU count and memory (they share the kernel), so the
reservations are relative to what `list-machines` publishes: a unit reserving more than half of
a machine leaves no room for a second one there.
"""

from __future__ import annotations

import os

import pytest

from _functional import counts, unit_body, wait_for

pytest_plugins = ["fleetlab.pytest_plugin"]
pytestmark = pytest.mark.lab(nodes=3, wait_fleetd=True, agent_ttl="3s")


def host_memory() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


def test_machines_publish_cpus_and_memory(fleet):
    machines = fleet.machines()
    assert len(machines) == 3
    for m in machines.values():
        assert m["cpus"] == len(os.sched_getaffinity(0))
        assert m["memory"] == host_memory()
    rows = fleet.ctl("list-machines", "--no-legend", "--fields", "machine,cpus,memory").stdout.splitlines()
    assert {line.split()[1] for line in rows} == {f"{len(os.sched_getaffinity(0)):g}"}


def _reservation(kind: str, cpus: float, memory: int) -> dict:
    """Unit-file lines reserving a bit more than half of a machine."""
    big_memory = int(memory * 0.6)
    return {
        "ReserveCPU": {"xfleet": [f"ReserveCPU={cpus:g}"]},
        "ReserveMemory": {"xfleet": [f"ReserveMemory={big_memory}"]},
        "MemoryMax": {"service": [f"MemoryMax={big_memory}"]},
        "CPUQuota": {"service": [f"CPUQuota={int(cpus * 100 * 0.75)}%"]},
    }[kind]


@pytest.mark.parametrize("kind", ["ReserveCPU", "ReserveMemory", "MemoryMax", "CPUQuota"])
def test_units_only_placed_where_they_fit(fleet, kind):
    machine = next(iter(fleet.machines().values()))
    extra = _reservation(kind, machine["cpus"], machine["memory"])
    names = [f"big-{kind.lower()}.{i}.service" for i in range(4)]
    paths = [fleet.write(n, unit_body(n, **extra)) for n in names]
    fleet.ctl("start", "--no-block", *paths)
    fleet.wait_active(3)
    fleet.barrier()
    placed = fleet.single(fleet.wait_active(3))
    assert len(set(placed.values())) == 3, f"two big units share a machine: {placed}"
    (waiting,) = set(names) - set(placed)
    assert fleet.unit_files()[waiting].machine_id is None
    assert fleet.copies([waiting]) == {waiting: []}

    # free one machine: the waiting unit goes there, and only there
    freed_unit = sorted(placed)[0]
    freed_machine = placed[freed_unit]
    fleet.ctl("destroy", freed_unit)
    # until the waiting unit is active and the destroyed one is no longer listed: the agent
    # starts the one and stops the other in one pass, and their reports need not land together
    now = wait_for(f"{waiting} placed on the freed machine, {freed_unit} gone",
                   lambda: (lambda a: a if waiting in a and freed_unit not in a else None)(fleet.single(fleet.active())))
    assert now[waiting] == freed_machine
    assert {n: m for n, m in now.items() if n != waiting} == {n: m for n, m in placed.items() if n != freed_unit}
    fleet.wait_runs_once([n for n in names if n != freed_unit])


def test_unit_larger_than_any_machine_is_never_placed(fleet):
    cpus = next(iter(fleet.machines().values()))["cpus"]
    path = fleet.write("huge.service", unit_body("huge", xfleet=[f"ReserveCPU={cpus + 1:g}"]))
    failed = fleet.ctl("start", "--block-attempts=4", path, check=False)
    assert failed.returncode == 1
    fleet.barrier()
    assert fleet.unit_files()["huge.service"].machine_id is None
    assert fleet.copies(["huge.service"]) == {"huge.service": []}


def test_dynamic_metadata_moves_a_unit(fleet):
    n1, n2, n3 = fleet.lab.nodes
    fleet.ctl("start", "--no-block", fleet.write("db.service", unit_body("db", xfleet=["MachineMetadata=role=db"])))
    fleet.barrier()
    assert fleet.unit_files()["db.service"].machine_id is None

    fleet.set_metadata(n2.machine_id, "role", "db")
    assert wait_for("db.service active", lambda: fleet.active().get("db.service")) == [n2.machine_id]
    assert fleet.wait_runs_once(["db.service"]) == {"db.service": n2.name}
    assert fleet.machines()[n2.machine_id]["metadata"]["role"] == "db"

    fleet.set_metadata(n2.machine_id, "role", "")  # delete on n2, set on n3: the unit follows
    fleet.set_metadata(n3.machine_id, "role", "db")
    wait_for("db.service moved to n3", lambda: fleet.active().get("db.service") == [n3.machine_id])
    assert fleet.wait_runs_once(["db.service"]) == {"db.service": n3.name}
    assert "role" not in fleet.machines()[n2.machine_id]["metadata"]
    assert "db.service" not in fleet.fleet_units_on(n2)


def test_dynamic_metadata_selects_global_units(fleet):
    n1, n2, n3 = fleet.lab.nodes
    fleet.ctl("start", fleet.write("edge.service", unit_body(
        "edge", xfleet=["Global=true", "MachineMetadata=tier=edge"])))
    for node in (n1, n2, n3):
        fleet.barrier(machine_metadata=f"hostname={node.name}")
    assert fleet.copies(["edge.service"]) == {"edge.service": []}

    fleet.set_metadata(n1.machine_id, "tier", "edge")
    fleet.set_metadata(n3.machine_id, "tier", "edge")
    wait_for("edge.service on n1 and n3",
             lambda: sorted(fleet.active().get("edge.service", [])) == sorted([n1.machine_id, n3.machine_id]))
    assert fleet.copies(["edge.service"]) == {"edge.service": [n1.name, n3.name]}

    fleet.set_metadata(n1.machine_id, "tier", "")
    wait_for("edge.service only on n3", lambda: fleet.active().get("edge.service") == [n3.machine_id])
    wait_for("edge.service stopped on n1", lambda: fleet.copies(["edge.service"]) == {"edge.service": [n3.name]})


def test_drain_moves_units_away_one_by_one(fleet):
    names = [f"drain.{i}.service" for i in range(6)]
    fleet.ctl("start", *[fleet.write(n, unit_body(n)) for n in names])
    before = fleet.single(fleet.wait_active(6))
    assert counts(before.values()) == [2, 2, 2]
    drained = fleet.lab.node(2)
    leaving = sorted(n for n, m in before.items() if m == drained.machine_id)
    since = fleet.revision()

    out = fleet.ctl("drain", drained.machine_id[:8]).stdout
    assert out.strip() == f"Machine {drained.machine_id[:8]}... draining"
    assert fleet.machines()[drained.machine_id]["draining"] is True

    def drained_away():
        active = fleet.single(fleet.active())
        return active if len(active) == 6 and drained.machine_id not in active.values() else None

    after = wait_for("every unit moved off the drained machine", drained_away)
    assert {n: m for n, m in after.items() if n not in leaving} == {n: m for n, m in before.items() if n not in leaving}
    where = fleet.wait_runs_once(names)
    assert drained.name not in where.values()
    wait_for("drained machine's units directory empty", lambda: fleet.fleet_units_on(drained) == [])

    # one by one: each unit left the machine in its own engine transaction
    history = fleet.history(f"schedule/{drained.machine_id}/", since)
    deletes = [e for e in history if e["type"] == "DELETE"]
    assert sorted(e["key"].rpartition("/")[2] for e in deletes) == leaving, history
    assert len({e["revision"] for e in deletes}) == len(leaving), f"units left in one step: {deletes}"

    # no new placement on a draining machine, although it is the least loaded
    fleet.ctl("start", fleet.write("new.0.service", unit_body("new 0")))
    assert fleet.single(fleet.active())["new.0.service"] != drained.machine_id

    out = fleet.ctl("undrain", drained.machine_id).stdout
    assert out.strip() == f"Machine {drained.machine_id[:8]}... accepting units"
    assert fleet.machines()[drained.machine_id]["draining"] is False
    fleet.ctl("start", fleet.write("new.1.service", unit_body("new 1")))
    final = fleet.single(fleet.active())
    assert final["new.1.service"] == drained.machine_id  # the least loaded again
    assert {n: m for n, m in final.items() if n != "new.1.service"} == after | {"new.0.service": final["new.0.service"]}
