"""Machines leaving and coming back, on a 4-node lab (fleet's cluster_test.go, node_test.go and
TestScheduleMachineOf): MachineOf pairs migrate together, a unit migrates to the free machine
without other churn, a member reboot moves exactly one unit, and fleetd shutdown.

Our semantics differ from fleet's on purpose in one point (issue requirement "On SIGTERM units
keep running"): stopping fleetd does not purge the machine. Its units keep running, its record
and unit states expire with its lease after agent_ttl, and the engine then reschedules its
units elsewhere. While fleetd is down the old copies keep running unsupervised (as after a
SIGKILL in fleet, #440); when fleetd starts again it finds them no longer scheduled there and
stops them. A fleetd restart within the TTL adopts its lease and moves nothing.
"""

from __future__ import annotations

import time

import pytest

from _functional import unit_body, wait_for

pytest_plugins = ["fleetlab.pytest_plugin"]
pytestmark = pytest.mark.lab(nodes=4, wait_fleetd=True, agent_ttl="3s")

TTL = 3.0


def start_conflicting(fleet, count: int) -> dict[str, str]:
    names = [f"conflict.{i}.service" for i in range(count)]
    fleet.ctl("start", *[fleet.write(n, unit_body(n, xfleet=["Conflicts=conflict*"])) for n in names])
    placed = fleet.single(fleet.wait_active(count))
    assert len(set(placed.values())) == count
    fleet.assert_runs_once(names)
    return placed


def test_machine_of_pairs_migrate_together(fleet):
    for i in range(3):
        ping = fleet.write(f"ping.{i}.service", unit_body(f"ping {i}"))
        pong = fleet.write(f"pong.{i}.service", unit_body(f"pong {i}", xfleet=[f"MachineOf=ping.{i}.service"]))
        fleet.ctl("start", "--no-block", ping, pong)
    assert len(fleet.unit_files()) == 6
    states = fleet.single(fleet.wait_active(6))
    for i in range(3):
        assert states[f"ping.{i}.service"] == states[f"pong.{i}.service"]
    host = fleet.node_of(states["ping.1.service"])

    host.stop_fleetd()
    fleet.wait_machines(3)

    def migrated():
        now = fleet.single(fleet.active())
        return now if len(now) == 6 and now["ping.1.service"] != host.machine_id else None

    now = wait_for("ping.1 migrated", migrated)
    assert now["pong.1.service"] == now["ping.1.service"], "pong.1 did not migrate with ping.1"
    for i in (0, 2):  # the other pairs stayed where they were
        assert now[f"ping.{i}.service"] == states[f"ping.{i}.service"] == now[f"pong.{i}.service"]

    # fleetd back on the old host: it stops the copies that are no longer scheduled there
    host.start_fleetd()
    fleet.wait_machines(4)
    where = fleet.wait_runs_once([f"{kind}.{i}.service" for kind in ("ping", "pong") for i in range(3)])
    assert where["ping.1.service"] == where["pong.1.service"] == fleet.node_of(now["ping.1.service"]).name
    wait_for("old host's units directory empty", lambda: fleet.fleet_units_on(host) == [])


def test_unit_migrates_to_the_free_machine_without_churn(fleet):
    """fleet's TestDynamicClusterNewMemberUnitMigration: 3 conflicting units on 4 machines;
    stopping fleetd on one unit's host moves exactly that unit, to the free machine."""
    before = start_conflicting(fleet, 3)
    free = (set(fleet.machines()) - set(before.values())).pop()
    host = fleet.node_of(before["conflict.1.service"])

    host.stop_fleetd()
    fleet.wait_machines(3)
    after = wait_for("conflict.1 active on the free machine",
                     lambda: (lambda a: a if a.get("conflict.1.service") == free and len(a) == 3 else None)(
                         fleet.single(fleet.active())))
    assert after["conflict.0.service"] == before["conflict.0.service"]
    assert after["conflict.2.service"] == before["conflict.2.service"]

    host.start_fleetd()
    fleet.wait_machines(4)
    where = fleet.wait_runs_once(list(before))
    assert where["conflict.1.service"] == fleet.node_of(free).name
    fleet.barrier()
    assert fleet.single(fleet.active()) == after, "units moved after the old host came back"


def test_member_reboot_moves_exactly_one_unit(fleet):
    """fleet's TestDynamicClusterMemberReboot (a replaced member): a node crashes and boots again
    after its machine expired; exactly one unit migrates (to the free machine), nothing moves
    back, the rebooted node runs no stale copy, and it takes new units again. Prints the
    failover time after a node kill at agent_ttl=3s."""
    before = start_conflicting(fleet, 3)
    free = (set(fleet.machines()) - set(before.values())).pop()
    victim = fleet.node_of(before["conflict.2.service"])

    killed = time.monotonic()
    victim.kill()
    fleet.wait_machines(3, timeout=TTL + 15)
    after = wait_for("conflict.2 active elsewhere",
                     lambda: (lambda a: a if len(a) == 3 and a["conflict.2.service"] != victim.machine_id else None)(
                         fleet.single(fleet.active())), timeout=TTL + 15)
    failover = time.monotonic() - killed
    assert after["conflict.2.service"] == free
    migrated = [n for n in before if before[n] != after[n]]
    assert migrated == ["conflict.2.service"]

    victim.start()
    fleet.wait_machines(4, timeout=60)
    assert fleet.fleet_units_on(victim) == []
    fleet.ctl("start", fleet.write("conflict.3.service", unit_body("conflict.3", xfleet=["Conflicts=conflict*"])))
    final = fleet.single(fleet.wait_active(4))
    assert final["conflict.3.service"] == victim.machine_id  # the only machine without a conflict
    assert {n: m for n, m in final.items() if n != "conflict.3.service"} == after
    fleet.assert_runs_once(list(final))
    print(f"\nFIGURE failover after a node kill (agent_ttl={TTL:g}s, engine interval 1s): "
          f"{failover:.1f}s from kill to the unit active elsewhere")


def test_fleetd_shutdown_keeps_units_and_hands_them_over(fleet):
    """fleet's TestNodeShutdown, adapted: after `systemctl stop fleetd` the machine leaves
    list-machines and its unit states are purged (both expire with its lease); its units keep
    running (no purge on SIGTERM) until the fence timer fleetd left stops them, just before its
    lease may expire, and the engine starts them elsewhere; no copy is left running."""
    names = [f"shut.{i}.service" for i in range(4)]
    fleet.ctl("start", *[fleet.write(n, unit_body(n)) for n in names])
    placed = fleet.single(fleet.wait_active(4))
    host = fleet.node_of(placed["shut.0.service"])
    mine = sorted(n for n, m in placed.items() if m == host.machine_id)
    pids = fleet.systemd(host, mine, "MainPID")

    stopped = time.monotonic()
    host.stop_fleetd()
    assert fleet.systemd(host, mine) == dict.fromkeys(mine, "active")  # units keep running
    assert fleet.systemd(host, mine, "MainPID") == pids
    fleet.wait_machines(3, timeout=TTL + 15)
    gone = time.monotonic() - stopped
    wait_for("the stopped machine's unit states purged",
             lambda: all(s.machine_id != host.machine_id for s in fleet.states()))
    now = wait_for("its units active elsewhere",
                   lambda: (lambda a: a if len(a) == 4 and host.machine_id not in a.values() else None)(
                       fleet.single(fleet.active())))
    assert {n: m for n, m in now.items() if n not in mine} == {n: m for n, m in placed.items() if n not in mine}
    # the fence timer stopped the copies on the fleetd-less host (tests/functional/test_outage.py)
    assert set(fleet.systemd(host, mine).values()) <= {"inactive", "failed"}

    host.start_fleetd()
    fleet.wait_machines(4)
    where = fleet.wait_runs_once(names)
    assert all(where[n] != host.name for n in mine)
    wait_for("leftover copies unloaded", lambda: fleet.fleet_units_on(host) == [])
    assert set(fleet.systemd(host, mine, "LoadState").values()) == {"not-found"}
    print(f"\nFIGURE machine gone from list-machines {gone:.1f}s after `systemctl stop fleetd` "
          f"(agent_ttl={TTL:g}s)")
