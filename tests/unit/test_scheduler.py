"""The engine's pure scheduler: fleet's reconciler/scheduler/AbleToRun tables, our extensions
(metadata operators, resources, drain), global units, and hypothesis properties."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _depth import examples
from fleetd.constraints import (
    RequirementsCache,
    format_metadata,
    global_units_for,
    metadata_matches,
)
from fleetd.engine.decisions import Decisions, Place, Unplace
from fleetd.engine.pool import LoadOrder
from fleetd.engine.scheduler import reconcile
from fleetd.errors import InvalidUnitOptions
from fleetd.model import ClusterSnapshot, DesiredState, Machine, Placement, Resources, Unit
from fleetd.unit.file import UnitFile
from fleetd.unit.requirements import MetadataConstraint, Requirements, glob_match, requirements_of

LAUNCHED, LOADED, INACTIVE = DesiredState.LAUNCHED, DesiredState.LOADED, DesiredState.INACTIVE


# --- helpers -----------------------------------------------------------------------------------


def unit(name: str, *xfleet: str, desired: str = "launched", service: str = "") -> Unit:
    """A Unit from unit-file text: [Service] plus the given [X-Fleet] lines."""
    text = f"[Service]\nExecStart=/usr/bin/sleep infinity\n{service}"
    if xfleet:
        text += "\n[X-Fleet]\n" + "\n".join(xfleet) + "\n"
    return Unit(name, UnitFile.parse(text, source=name), DesiredState(desired))


def machine(machine_id: str, cpu: float = 0.0, memory: int = 0, draining: bool = False,
            **metadata: str) -> Machine:
    return Machine(machine_id, metadata=metadata, capacity=Resources(cpu, memory), draining=draining)


def snapshot(units=(), machines=(), placed: dict[str, str] | None = None) -> ClusterSnapshot:
    """`placed` maps unit name -> machine ID; the placement carries the unit's current hash."""
    by_name = {u.name: u for u in units}
    placements = {}
    for name, machine_id in (placed or {}).items():
        u = by_name.get(name)
        placements[name] = Placement(name, machine_id, u.hash if u else "0" * 40,
                                     u.desired_state if u else LAUNCHED)
    return ClusterSnapshot(1, by_name, {m.id: m for m in machines}, placements)


def schedule_after(snap: ClusterSnapshot, decisions: Decisions) -> dict[str, str]:
    return {name: p.machine_id for name, p in decisions.apply(snap.placements).items()}


def applied(snap: ClusterSnapshot, decisions: Decisions) -> ClusterSnapshot:
    return ClusterSnapshot(snap.revision + 1, snap.units, snap.machines, decisions.apply(snap.placements))


def moves(decisions: Decisions) -> list[tuple[str, str]]:
    return [(p.placement.name, p.placement.machine_id) for p in decisions.places]


def removals(decisions: Decisions) -> list[tuple[str, str]]:
    return [(u.name, u.machine_id) for u in decisions.unplaces]


def settle(snap: ClusterSnapshot, limit: int = 50) -> tuple[ClusterSnapshot, list[Decisions]]:
    """Reconcile and apply until nothing changes; return the final snapshot and every pass."""
    history = []
    for _ in range(limit):
        decisions = reconcile(snap)
        history.append(decisions)
        if decisions.empty:
            return snap, history
        snap = applied(snap, decisions)
    raise AssertionError(f"no fixpoint after {limit} passes: {history[-1]}")


M1, M2, M3 = "m1", "m2", "m3"
FULL_A = "a1b2c3d4" + "0" * 24
FULL_B = "e5f6a7b8" + "0" * 24
FULL_B2 = "e5f6a7b8" + "1" * 24


# --- engine/reconciler_test.go TestCalculateClusterTasks ---------------------------------------


def test_no_work_for_an_empty_cluster():
    d = reconcile(snapshot())
    assert d.empty and d.unplaces == () and d.places == () and dict(d.unschedulable) == {}


def test_nothing_to_do_when_scheduled_and_machine_exists():
    foo = unit("foo.service")
    d = reconcile(snapshot([foo], [machine("XXX")], {"foo.service": "XXX"}))
    assert d.empty and not d.unschedulable


def test_reschedule_when_target_machine_went_away():
    foo = unit("foo.service")
    d = reconcile(snapshot([foo], [machine("YYY")], {"foo.service": "XXX"}))
    assert d.unplaces == (Unplace("foo.service", "XXX", "machine XXX went away"),)
    assert moves(d) == [("foo.service", "YYY")]
    assert d.places[0].placement == Placement("foo.service", "YYY", foo.hash, LAUNCHED)
    assert "went away" in d.places[0].reason


def test_unschedule_when_target_state_inactive():
    foo = unit("foo.service", desired="inactive")
    d = reconcile(snapshot([foo], [machine("XXX")], {"foo.service": "XXX"}))
    assert d.unplaces == (Unplace("foo.service", "XXX", "desired state inactive"),)
    assert d.places == () and not d.unschedulable


def test_unschedule_when_unit_was_destroyed():
    snap = ClusterSnapshot(1, {}, {"XXX": machine("XXX")},
                           {"foo.service": Placement("foo.service", "XXX", "0" * 40, LAUNCHED)})
    d = reconcile(snap)
    assert d.unplaces == (Unplace("foo.service", "XXX", "unit no longer exists"),)
    assert d.places == ()


def test_schedule_an_unscheduled_launched_unit():
    foo = unit("foo.service")
    d = reconcile(snapshot([foo], [machine("XXX")]))
    assert d.places == (Place(Placement("foo.service", "XXX", foo.hash, LAUNCHED),
                              "desired state launched and unit not scheduled"),)
    assert d.unplaces == ()


def test_loaded_units_are_scheduled_inactive_ones_are_not():
    d = reconcile(snapshot([unit("a.service", desired="loaded"), unit("b.service", desired="inactive")],
                           [machine(M1)]))
    assert d.places == (Place(Placement("a.service", M1, unit("a.service").hash, LOADED),
                              "desired state loaded and unit not scheduled"),)
    assert not d.unschedulable


def test_desired_state_change_updates_the_placement_in_place():
    foo = unit("foo.service", desired="loaded")
    snap = snapshot([foo], [machine(M1), machine(M2)], {"foo.service": M2})
    launched = Unit("foo.service", foo.file, LAUNCHED)
    snap = ClusterSnapshot(1, {"foo.service": launched}, snap.machines, snap.placements)
    d = reconcile(snap)
    assert d.unplaces == ()
    assert d.places == (Place(Placement("foo.service", M2, foo.hash, LAUNCHED),
                              "desired state changed to launched"),)


def test_new_hash_updates_the_placement_on_the_same_machine():
    old = unit("foo.service")
    new = unit("foo.service", service="Environment=V=2\n")
    snap = snapshot([old], [machine(M1), machine(M2)], {"foo.service": M2})
    snap = ClusterSnapshot(1, {"foo.service": new}, snap.machines, snap.placements)
    d = reconcile(snap)
    assert d.unplaces == ()
    assert d.places == (Place(Placement("foo.service", M2, new.hash, LAUNCHED), "unit file changed"),)


def test_machine_that_comes_back_causes_no_churn():
    a, b = unit("a.service"), unit("b.service")
    snap = snapshot([a, b], [machine(M2)], {"a.service": M1, "b.service": M2})
    first = reconcile(snap)
    assert removals(first) == [("a.service", M1)] and moves(first) == [("a.service", M2)]
    back = ClusterSnapshot(2, snap.units, {M1: machine(M1), M2: machine(M2)}, first.apply(snap.placements))
    assert reconcile(back).empty


# --- engine/scheduler_test.go: least-loaded order -----------------------------------------------


def test_least_loaded_machine_wins():
    units = [unit("a.service"), unit("b.service"), unit("c.service"), unit("new.service")]
    snap = snapshot(units, [machine(M1), machine(M2), machine(M3)],
                    {"a.service": M1, "b.service": M1, "c.service": M3})
    assert moves(reconcile(snap)) == [("new.service", M2)]


def test_ties_go_to_the_lower_machine_id():
    units = [unit("a.service"), unit("new.service")]
    snap = snapshot(units, [machine("c"), machine("b"), machine("a")], {"a.service": "a"})
    assert moves(reconcile(snap)) == [("new.service", "b")]


def test_load_is_updated_within_one_pass():
    names = [f"u{i}.service" for i in range(7)]
    d = reconcile(snapshot([unit(n) for n in names], [machine(M1), machine(M2), machine(M3)]))
    assert moves(d) == [(n, [M1, M2, M3][i % 3]) for i, n in enumerate(names)]


def test_global_units_count_in_load():
    # m1 runs two global units (one matches only m1's metadata), m2 runs one: m3 is emptiest.
    units = [unit("g1.service", "Global=true"),
             unit("g2.service", "Global=true", "MachineMetadata=role=web"),
             unit("g3.service", "Global=true", "MachineMetadata=role=db"),
             unit("a.service"), unit("b.service")]
    machines = [machine(M1, role="web"), machine(M2), machine(M3, role="db")]
    snap = snapshot(units, machines, {"a.service": M3})
    d = reconcile(snap)
    # loads: m1 = 2 (g1, g2), m2 = 1 (g1), m3 = 2 (g1, g3) + a = 3 -> b goes to m2
    assert moves(d) == [("b.service", M2)]
    assert all(not p.placement.name.startswith("g") for p in d.places)


def test_inactive_global_units_do_not_count_in_load():
    units = [unit("g.service", "Global=true", "MachineMetadata=role=web", desired="inactive"),
             unit("a.service")]
    d = reconcile(snapshot(units, [machine(M1, role="web"), machine(M2)]))
    assert moves(d) == [("a.service", M1)]


def test_global_units_are_never_placed_and_stale_placements_are_removed():
    g = unit("g.service", "Global=true")
    d = reconcile(snapshot([g], [machine(M1)], {"g.service": M1}))
    assert d.unplaces == (Unplace("g.service", M1, "global units are not scheduled"),)
    assert d.places == () and not d.unschedulable


# --- agent AbleToRun (TestAbleToRun) ------------------------------------------------------------

ABLE_TO_RUN = [
    # (id, machines, already placed {unit: machine}, new unit, expected machine or None)
    ("nothing to worry about", [machine("123")], {}, unit("easy-street.service"), "123"),
    ("MachineID match", [machine("XYZ"), machine("123")], {}, unit("x.service", "MachineID=XYZ"), "XYZ"),
    ("legacy X-ConditionMachineID match", [machine("123"), machine("XYZ")], {},
     unit("x.service", "X-ConditionMachineID=XYZ"), "XYZ"),
    ("MachineID mismatch", [machine("123")], {}, unit("x.service", "MachineID=XYZ"), None),
    ("MachineID full 32-char ID", [machine(FULL_A), machine(FULL_B)], {},
     unit("x.service", f"MachineID={FULL_B}"), FULL_B),
    ("MachineID 8-char short ID", [machine(FULL_A), machine(FULL_B)], {},
     unit("x.service", "MachineID=e5f6a7b8"), FULL_B),
    ("MachineID other prefix length does not match", [machine(FULL_A), machine(FULL_B)], {},
     unit("x.service", "MachineID=e5f6a7"), None),
    ("MachineID ambiguous short ID", [machine(FULL_B), machine(FULL_B2)], {},
     unit("x.service", "MachineID=e5f6a7b8"), None),
    ("MachineID ambiguous short ID but exact full ID", [machine(FULL_B), machine(FULL_B2)], {},
     unit("x.service", f"MachineID={FULL_B2}"), FULL_B2),
    ("metadata match", [machine("123", region="us-west")], {},
     unit("x.service", "X-ConditionMachineMetadata=region=us-west"), "123"),
    ("metadata ignored without requirement", [machine("123", region="us-west")], {},
     unit("easy-street.service"), "123"),
    ("metadata mismatch", [machine("123", region="us-west")], {},
     unit("x.service", "MachineMetadata=region=us-east"), None),
    ("metadata missing key", [machine("123")], {}, unit("x.service", "MachineMetadata=region=us-east"), None),
    ("metadata values of one key are ORed", [machine("1", region="eu"), machine("2", region="us")], {"a.service": "1"},
     unit("x.service", "MachineMetadata=region=us region=eu"), "2"),
    ("metadata ORed across lines", [machine("1", region="ap"), machine("2", region="eu")], {},
     unit("x.service", "MachineMetadata=region=us", "MachineMetadata=region=eu"), "2"),
    ("metadata keys are ANDed", [machine("1", region="us", disk="hdd"), machine("2", region="us", disk="ssd"),
                                 machine("3", region="eu", disk="ssd")], {},
     unit("x.service", "MachineMetadata=region=us disk=ssd"), "2"),
    ("metadata keys ANDed, none has both", [machine("1", region="us", disk="hdd"), machine("3", region="eu", disk="ssd")],
     {}, unit("x.service", "MachineMetadata=region=us disk=ssd"), None),
    ("peer scheduled locally", [machine("1"), machine("123")], {"pong.service": "123"},
     unit("x.service", "X-ConditionMachineOf=pong.service"), "123"),
    ("multiple peers scheduled locally", [machine("1"), machine("123")], {"ping.service": "123", "pong.service": "123"},
     unit("x.service", "MachineOf=pong.service", "MachineOf=ping.service"), "123"),
    ("peer not scheduled", [machine("123")], {}, unit("x.service", "MachineOf=ping.service"), None),
    ("one of multiple peers not scheduled", [machine("123")], {"ping.service": "123"},
     unit("x.service", "MachineOf=pong.service", "MachineOf=ping.service"), None),
    ("peers on different machines", [machine("1"), machine("2")], {"ping.service": "1", "pong.service": "2"},
     unit("x.service", "MachineOf=pong.service ping.service"), None),
    ("no conflicts found", [machine("123")], {"ping.service": "123"}, unit("x.service", "X-Conflicts=pong.service"), "123"),
    ("conflict found", [machine("123")], {"ping.service": "123"}, unit("x.service", "Conflicts=ping.service"), None),
    ("conflict found, other machine free", [machine("1"), machine("2")], {"ping.service": "1", "a.service": "2"},
     unit("x.service", "Conflicts=ping.service"), "2"),
    ("conflict glob", [machine("1"), machine("2")], {"web@1.service": "1"},
     unit("web@2.service", "Conflicts=web@*.service"), "2"),
    ("conflict glob character class", [machine("1")], {"web@a.service": "1"},
     unit("x.service", "Conflicts=web@[abc].service"), None),
    ("conflict glob no match", [machine("1")], {"web@d.service": "1"},
     unit("x.service", "Conflicts=web@[abc].service"), "1"),
    ("conflict declared by the placed unit (symmetric)", [machine("1")], {"bar.service": "1"},
     unit("foo.service"), "1"),  # see the table below for bar's conflicts
    ("replaces: may land on the replaced unit's machine", [machine("1")], {"old.service": "1"},
     unit("new.service", "Replaces=old.service"), "1"),
]


@pytest.mark.parametrize("case_id, machines, placed, new, expected", ABLE_TO_RUN, ids=[c[0] for c in ABLE_TO_RUN])
def test_able_to_run(case_id, machines, placed, new, expected):
    existing = [unit(name) for name in placed]
    snap = snapshot(existing + [new], machines, placed)
    d = reconcile(snap)
    after = schedule_after(snap, d)
    assert after.get(new.name) == expected
    if expected is None:
        assert new.name in d.unschedulable
    else:
        assert new.name not in d.unschedulable


def test_conflict_declared_by_placed_unit_blocks_the_new_one():
    bar = unit("bar.service", "Conflicts=foo.service")
    foo = unit("foo.service")
    d = reconcile(snapshot([bar, foo], [machine("1")], {"bar.service": "1"}))
    assert d.places == ()
    assert d.unschedulable["foo.service"] == "cannot run on machine 1: conflicts with bar.service on 1"


def test_multiple_conflicts_values_space_separated_and_repeated():
    # fleet's TestScheduleMultipleConflicts: 3 units, each conflicting with the 2 others.
    units = [unit("a.service", "Conflicts=b.service c.service"),
             unit("b.service", "Conflicts=a.service", "Conflicts=c.service"),
             unit("c.service", "X-Conflicts=a.service b.service")]
    d = reconcile(snapshot(units, [machine(M1), machine(M2), machine(M3)]))
    assert moves(d) == [("a.service", M1), ("b.service", M2), ("c.service", M3)]
    d = reconcile(snapshot(units, [machine(M1), machine(M2)]))
    assert moves(d) == [("a.service", M1), ("b.service", M2)]
    assert "c.service" in d.unschedulable


def test_mutually_conflicting_units_spread_and_the_rest_wait():
    # fleet's TestScheduleConflicts: 3 machines, 5 mutually conflicting units -> 3 run.
    units = [unit(f"conflict.{i}.service", "Conflicts=conflict.*.service") for i in range(5)]
    d = reconcile(snapshot(units, [machine(M1), machine(M2), machine(M3)]))
    placed = dict(moves(d))
    assert len(placed) == 3 and len(set(placed.values())) == 3
    assert sorted(d.unschedulable) == ["conflict.3.service", "conflict.4.service"]
    assert d.unschedulable["conflict.3.service"].startswith("no machine can run it: 3 machines hold a conflicting unit")


def test_one_way_conflict_waits_until_the_other_unit_is_gone():
    # fleet's TestScheduleOneWayConflict: A conflicts with hello; hello waits until A is destroyed.
    a = unit("a.service", "Conflicts=hello.service")
    hello = unit("hello.service")
    snap = snapshot([a, hello], [machine(M1)])
    d = reconcile(snap)
    assert moves(d) == [("a.service", M1)]
    assert "conflicts with a.service" in d.unschedulable["hello.service"]
    snap = applied(snap, d)
    assert reconcile(snap).empty
    gone = ClusterSnapshot(3, {"hello.service": hello}, snap.machines, snap.placements)
    d = reconcile(gone)
    assert removals(d) == [("a.service", M1)] and moves(d) == [("hello.service", M1)]


def test_existing_conflicting_placements_keep_the_first():
    a = unit("a.service", "Conflicts=b.service")
    b = unit("b.service")
    d = reconcile(snapshot([a, b], [machine(M1), machine(M2)], {"a.service": M1, "b.service": M1}))
    assert d.unplaces == (Unplace("b.service", M1, "conflicts with a.service on m1"),)
    assert moves(d) == [("b.service", M2)]


# --- MachineOf ----------------------------------------------------------------------------------


def test_dependent_follows_its_peer_even_when_it_sorts_first():
    units = [unit("announce.service", "MachineOf=db.service"), unit("db.service")]
    d = reconcile(snapshot(units, [machine(M1), machine(M2)]))
    assert moves(d) == [("db.service", M1), ("announce.service", M1)]


def test_machineof_pairs_move_together_when_their_machine_goes_away():
    # fleet's TestScheduleMachineOf: ping.N/pong.N pairs land together and migrate together.
    units = []
    for i in range(3):
        units += [unit(f"ping.{i}.service"), unit(f"pong.{i}.service", f"MachineOf=ping.{i}.service")]
    snap = snapshot(units, [machine(M1), machine(M2), machine(M3)])
    d = reconcile(snap)
    after = schedule_after(snap, d)
    for i in range(3):
        assert after[f"ping.{i}.service"] == after[f"pong.{i}.service"]
    assert len({after[f"ping.{i}.service"] for i in range(3)}) == 3
    snap = applied(snap, d)
    lost = after["ping.0.service"]
    survivors = {mid: m for mid, m in snap.machines.items() if mid != lost}
    snap = ClusterSnapshot(2, snap.units, survivors, snap.placements)
    d = reconcile(snap)
    assert sorted(removals(d)) == [("ping.0.service", lost), ("pong.0.service", lost)]
    assert [name for name, _ in moves(d)] == ["ping.0.service", "pong.0.service"]
    (target,) = {mid for _, mid in moves(d)}
    assert target != lost
    assert reconcile(applied(snap, d)).empty


def test_dependent_waits_for_its_peer_with_a_reason():
    units = [unit("sidekick.service", "MachineOf=db.service"), unit("db.service", desired="inactive")]
    d = reconcile(snapshot(units, [machine(M1)]))
    assert d.places == ()
    assert d.unschedulable == {"sidekick.service": "MachineOf peer db.service is not scheduled"}


def test_dependent_is_unplaced_when_its_peer_becomes_inactive():
    units = [unit("sidekick.service", "MachineOf=db.service"), unit("db.service", desired="inactive")]
    d = reconcile(snapshot(units, [machine(M1)], {"db.service": M1, "sidekick.service": M1}))
    assert d.unplaces == (Unplace("db.service", M1, "desired state inactive"),
                          Unplace("sidekick.service", M1, "MachineOf peer db.service is no longer on machine m1"))
    assert d.places == ()


def test_dependent_whose_peer_cannot_take_it_waits():
    units = [unit("db.service"), unit("big.service", "MachineOf=db.service", "ReserveCPU=4")]
    d = reconcile(snapshot(units, [machine(M1, cpu=2)]))
    assert moves(d) == [("db.service", M1)]
    assert "has 2 of 2 cpu free, needs 4" in d.unschedulable["big.service"]


def test_machineof_a_global_unit():
    units = [unit("agent.service", "Global=true", "MachineMetadata=role=web"), unit("x.service", "MachineOf=agent.service")]
    d = reconcile(snapshot(units, [machine(M1), machine(M2, role="web")]))
    assert moves(d) == [("x.service", M2)]


def test_machineof_cycle_waits():
    units = [unit("a.service", "MachineOf=b.service"), unit("b.service", "MachineOf=a.service")]
    d = reconcile(snapshot(units, [machine(M1)]))
    assert d.places == () and set(d.unschedulable) == {"a.service", "b.service"}


# --- Replaces -------------------------------------------------------------------------------------


def test_replacing_unit_takes_the_machine_and_the_replaced_unit_moves():
    # fleet's TestScheduleReplace: kick replaces replace.0 on its machine; replace.0 moves.
    units = [unit("replace.0.service"), unit("other.1.service"), unit("other.2.service"),
             unit("kick.service", "Replaces=replace.0.service")]
    snap = snapshot(units, [machine(M1), machine(M2)],
                    {"replace.0.service": M1, "other.1.service": M2, "other.2.service": M2})
    d = reconcile(snap)
    assert d.unplaces == (Unplace("replace.0.service", M1, "replaced by kick.service"),)
    assert moves(d) == [("kick.service", M1), ("replace.0.service", M2)]
    assert reconcile(applied(snap, d)).empty


def test_replaced_unit_keeps_its_constraints():
    # fleet moves the replaced unit to another machine without checking; we leave it waiting.
    units = [unit("old.service", "MachineMetadata=role=special"), unit("new.service", "Replaces=old.service")]
    busy = [unit(f"busy{i}.service") for i in range(4)]  # so that m1 is the least loaded
    snap = snapshot(units + busy, [machine(M1, role="special"), machine(M2)],
                    {"old.service": M1, **{b.name: M2 for b in busy}})
    d = reconcile(snap)
    assert removals(d) == [("old.service", M1)]
    assert moves(d) == [("new.service", M1)]
    assert d.unschedulable["old.service"] == "cannot run on machine m1: new.service on m1 replaces it"
    assert reconcile(applied(snap, d)).empty


def test_room_freed_by_a_displacement_is_used_in_the_same_pass():
    # a.service fails first (m1 full), then new.service displaces old.service: a.service is
    # retried in the same pass and takes the freed cpu (otherwise the next pass would place it).
    units = [unit("a.service", "ReserveCPU=1"), unit("new.service", "Replaces=old.service", "ReserveCPU=1"),
             unit("old.service", "ReserveCPU=2")]
    snap = snapshot(units, [machine(M1, cpu=2)], {"old.service": M1})
    d = reconcile(snap)
    assert removals(d) == [("old.service", M1)]
    assert moves(d) == [("new.service", M1), ("a.service", M1)]
    assert d.unschedulable == {"old.service": "cannot run on machine m1: new.service on m1 replaces it"}
    assert reconcile(applied(snap, d)).empty


def test_replacing_unit_still_honours_conflicts_declared_by_others():
    units = [unit("x.service", "Conflicts=new.service"), unit("b1.service"), unit("b2.service"),
             unit("new.service", "Replaces=old.service")]
    snap = snapshot(units, [machine(M1), machine(M2)], {"x.service": M1, "b1.service": M2, "b2.service": M2})
    assert moves(reconcile(snap)) == [("new.service", M2)]


def test_replaced_unit_cannot_land_next_to_its_replacer():
    units = [unit("new.service", "Replaces=old.service"), unit("old.service")]
    d = reconcile(snapshot(units, [machine(M1)], {"new.service": M1}))
    assert d.places == ()
    assert d.unschedulable["old.service"] == "cannot run on machine m1: new.service on m1 replaces it"


def test_existing_replaced_unit_moves_in_pass_one():
    units = [unit("new.service", "Replaces=old.service"), unit("old.service")]
    snap = snapshot(units, [machine(M1), machine(M2)], {"new.service": M1, "old.service": M1})
    d = reconcile(snap)
    assert d.unplaces == (Unplace("old.service", M1, "replaced by new.service"),)
    assert moves(d) == [("old.service", M2)]


def test_replacer_does_not_prefer_the_replaced_units_machine():
    units = [unit("old.service"), unit("new.service", "Replaces=old.service")]
    d = reconcile(snapshot(units, [machine(M1), machine(M2)], {"old.service": M1}))
    assert moves(d) == [("new.service", M2)] and d.unplaces == ()


@pytest.mark.parametrize("machines, expected_placed", [([M1], 1), ([M1, M2], 2)])
def test_circular_replaces(machines, expected_placed):
    # fleet's TestScheduleCircularReplace: the rule is ignored for the pair; where they would
    # share a machine only one of them runs.
    units = [unit("replace.0.service", "Replaces=replace.1.service"),
             unit("replace.1.service", "Replaces=replace.0.service")]
    snap = snapshot(units, [machine(m) for m in machines])
    d = reconcile(snap)
    after = schedule_after(snap, d)
    assert len(after) == expected_placed
    assert len(set(after.values())) == expected_placed
    assert d.unplaces == ()
    assert reconcile(applied(snap, d)).empty


def test_circular_replaces_already_together_keeps_one():
    units = [unit("replace.0.service", "Replaces=replace.1.service"),
             unit("replace.1.service", "Replaces=replace.0.service")]
    d = reconcile(snapshot(units, [machine(M1)], {"replace.0.service": M1, "replace.1.service": M1}))
    assert d.unplaces == (Unplace("replace.1.service", M1, "replace.0.service on m1 and it replace each other"),)
    assert d.places == ()


def test_replaces_cycle_of_three_terminates():
    units = [unit("a.service", "Replaces=b.service"), unit("b.service", "Replaces=c.service"),
             unit("c.service", "Replaces=a.service")]
    snap = snapshot(units, [machine(M1)])
    final, history = settle(snap)
    assert len(final.placements) == 1
    assert len(history) <= 3


# --- global units (agent TestDesiredAgentState) ---------------------------------------------------

DESIRED_AGENT_STATE = [
    # (id, machine, units, placements {name: machine}, expected globals)
    ("global without metadata", machine(M1), [unit("g.service", "Global=true")], {}, {"g.service"}),
    ("global metadata match", machine(M1, region="us"),
     [unit("g.service", "Global=true", "MachineMetadata=region=us")], {}, {"g.service"}),
    ("global metadata mismatch", machine(M1, region="eu"),
     [unit("g.service", "Global=true", "MachineMetadata=region=us")], {}, set()),
    ("global metadata OR", machine(M1, region="eu"),
     [unit("g.service", "Global=true", "MachineMetadata=region=us region=eu")], {}, {"g.service"}),
    ("global metadata AND", machine(M1, region="eu"),
     [unit("g.service", "Global=true", "MachineMetadata=region=eu", "MachineMetadata=disk=ssd")], {}, set()),
    ("inactive global", machine(M1), [unit("g.service", "Global=true", desired="inactive")], {}, set()),
    ("loaded global", machine(M1), [unit("g.service", "Global=true", desired="loaded")], {}, {"g.service"}),
    ("non-global units are not returned", machine(M1), [unit("a.service")], {"a.service": M1}, set()),
    ("conflicting globals: only the first", machine(M1),
     [unit("g1.service", "Global=true", "Conflicts=g2.service"), unit("g2.service", "Global=true")], {},
     {"g1.service"}),
    ("conflicting globals, glob declared by the second", machine(M1),
     [unit("g1.service", "Global=true"), unit("g2.service", "Global=true", "Conflicts=g*.service")], {},
     {"g1.service"}),
    ("global conflicting with a unit scheduled here", machine(M1),
     [unit("g.service", "Global=true", "Conflicts=a.service"), unit("a.service")], {"a.service": M1}, set()),
    ("scheduled unit conflicting with the global", machine(M1),
     [unit("g.service", "Global=true"), unit("a.service", "Conflicts=g.service")], {"a.service": M1}, set()),
    ("unit scheduled elsewhere does not matter", machine(M1),
     [unit("g.service", "Global=true", "Conflicts=a.service"), unit("a.service")], {"a.service": M2}, {"g.service"}),
    ("inactive scheduled unit does not matter", machine(M1),
     [unit("g.service", "Global=true", "Conflicts=a.service"), unit("a.service", desired="inactive")],
     {"a.service": M1}, {"g.service"}),
]


@pytest.mark.parametrize("case_id, mach, units, placed, expected", DESIRED_AGENT_STATE,
                         ids=[c[0] for c in DESIRED_AGENT_STATE])
def test_global_units_for(case_id, mach, units, placed, expected):
    snap = snapshot(units, [mach], placed)
    assert global_units_for(mach, units, snap.placements) == expected
    assert global_units_for(mach, units, list(snap.placements.values())) == expected


def test_global_units_for_dynamic_metadata():
    g = unit("g.service", "Global=true", "MachineMetadata=maintenance!=true")
    assert global_units_for(machine(M1), [g]) == {"g.service"}
    assert global_units_for(machine(M1, maintenance="true"), [g]) == set()


def test_scheduled_unit_avoids_machines_with_a_conflicting_global():
    units = [unit("g.service", "Global=true", "MachineMetadata=role=web", "Conflicts=a.service"),
             unit("a.service")]
    d = reconcile(snapshot(units, [machine(M1, role="web"), machine(M2, role="web"), machine(M3)]))
    assert moves(d) == [("a.service", M3)]


def test_scheduled_unit_is_moved_off_a_machine_where_a_global_conflicts():
    units = [unit("g.service", "Global=true", "MachineMetadata=role=web"), unit("a.service", "Conflicts=g.service")]
    snap = snapshot(units, [machine(M1, role="web"), machine(M2)], {"a.service": M1})
    d = reconcile(snap)
    assert d.unplaces == (Unplace("a.service", M1, "conflicts with g.service on m1"),)
    assert moves(d) == [("a.service", M2)]
    # and the agent then runs the global on m1, not on m2 (metadata)
    after = applied(snap, d)
    assert global_units_for(after.machines[M1], units, after.placements) == {"g.service"}
    assert global_units_for(after.machines[M2], units, after.placements) == set()


# --- metadata operators (our extension) ---------------------------------------------------------

METADATA = [
    # (constraints as unit lines, machine metadata, expected)
    (["MachineMetadata=region!=us"], {"region": "eu"}, True),
    (["MachineMetadata=region!=us"], {"region": "us"}, False),
    (["MachineMetadata=region!=us"], {}, True),
    (["MachineMetadata=cores>=8"], {"cores": "8"}, True),
    (["MachineMetadata=cores>=8"], {"cores": "16"}, True),
    (["MachineMetadata=cores>=8"], {"cores": "4"}, False),
    (["MachineMetadata=cores>8"], {"cores": "8"}, False),
    (["MachineMetadata=cores<8"], {"cores": "7.5"}, True),
    (["MachineMetadata=cores<=8"], {"cores": "8"}, True),
    (["MachineMetadata=cores>=8"], {"cores": "many"}, False),
    (["MachineMetadata=cores>=8"], {}, False),
    (["MachineMetadata=cores>=4 cores<=8"], {"cores": "6"}, True),
    (["MachineMetadata=cores>=4 cores<=8"], {"cores": "12"}, False),
    (["MachineMetadata=region=us region=eu cores>=4"], {"region": "eu", "cores": "4"}, True),
    (["MachineMetadata=region=us region=eu cores>=4"], {"region": "ap", "cores": "4"}, False),
    (["MachineMetadata=region=us region=eu cores>=4"], {"region": "us", "cores": "2"}, False),
    (["MachineMetadata=region=us", "MachineMetadata=disk=ssd"], {"region": "us", "disk": "ssd"}, True),
]


@pytest.mark.parametrize("lines, metadata, expected", METADATA)
def test_metadata_operators(lines, metadata, expected):
    u = unit("x.service", *lines)
    reqs = requirements_of(u.file, u.name)
    assert metadata_matches(metadata, reqs.metadata) is expected
    d = reconcile(snapshot([u], [machine(M1, **metadata)]))
    assert (moves(d) == [("x.service", M1)]) is expected


def test_metadata_without_constraints_and_unknown_operator():
    assert metadata_matches({}, ())
    assert not metadata_matches({"a": "1"}, (MetadataConstraint("a", "~", "1"),))
    assert format_metadata((MetadataConstraint("region", "=", "us"), MetadataConstraint("cores", ">=", "4"))) \
        == "MachineMetadata=region=us cores>=4"


def test_unschedulable_reason_names_the_unit_and_the_constraint():
    d = reconcile(snapshot([unit("web@1.service", "MachineMetadata=region=us")], [machine(M1, region="eu")]))
    assert d.unschedulable_lines() == ["web@1.service: no machine satisfies MachineMetadata=region=us"]


def test_dynamic_metadata_change_moves_the_unit():
    u = unit("x.service", "MachineMetadata=state!=maintenance")
    snap = snapshot([u], [machine(M1, state="maintenance"), machine(M2)], {"x.service": M1})
    d = reconcile(snap)
    assert d.unplaces == (Unplace("x.service", M1,
                                  "machine m1 no longer satisfies MachineMetadata=state!=maintenance"),)
    assert moves(d) == [("x.service", M2)]


def test_many_metadata_groups_pick_least_loaded_within_the_group():
    machines = [machine(f"m{i:02d}", region=["us", "eu"][i % 2]) for i in range(100)]
    units = [unit(f"eu{i:03d}.service", "MachineMetadata=region=eu") for i in range(150)]
    units += [unit(f"any{i:03d}.service") for i in range(100)]
    snap = snapshot(units, machines)
    d = reconcile(snap)
    after = schedule_after(snap, d)
    assert not d.unschedulable
    loads = {m.id: 0 for m in machines}
    for name, mid in after.items():
        if name.startswith("eu"):
            assert snap.machines[mid].metadata["region"] == "eu"
        loads[mid] += 1
    # "any*" sort first and spread 1 per machine; the 150 "eu*" then add 3 per eu machine.
    assert {mid: n for mid, n in loads.items() if int(mid[1:]) % 2 == 0} == {f"m{i:02d}": 1 for i in range(0, 100, 2)}
    assert set(n for mid, n in loads.items() if int(mid[1:]) % 2 == 1) == {4}


# --- resources (our extension) ------------------------------------------------------------------


def test_cpu_reservations_fit_in_capacity():
    units = [unit(f"r{i}.service", "ReserveCPU=1") for i in range(3)]
    d = reconcile(snapshot(units, [machine(M1, cpu=2)]))
    assert moves(d) == [("r0.service", M1), ("r1.service", M1)]
    assert d.unschedulable["r2.service"] == "cannot run on machine m1: machine m1 has 0 of 2 cpu free, needs 1"


def test_cpu_quota_counts_as_reservation_and_skips_full_machines():
    units = [unit("big.service", service="CPUQuota=150%\n"), unit("next.service", "ReserveCPU=1")]
    d = reconcile(snapshot(units, [machine(M1, cpu=2), machine(M2, cpu=2)]))
    assert moves(d) == [("big.service", M1), ("next.service", M2)]


def test_memory_reservations_and_units_without_reservation():
    units = [unit("a.service", "ReserveMemory=1G"), unit("b.service", "ReserveMemory=1G"),
             unit("c.service"), unit("d.service")]
    d = reconcile(snapshot(units, [machine(M1, memory=1536 << 20)]))
    assert moves(d) == [("a.service", M1), ("c.service", M1), ("d.service", M1)]
    assert "memory free" in d.unschedulable["b.service"]


def test_unknown_capacity_means_no_limit():
    units = [unit(f"r{i}.service", "ReserveCPU=8", "ReserveMemory=64G") for i in range(3)]
    d = reconcile(snapshot(units, [machine(M1)]))
    assert len(d.places) == 3 and not d.unschedulable


def test_global_reservations_count():
    units = [unit("g.service", "Global=true", "ReserveCPU=1.5"), unit("a.service", "ReserveCPU=1")]
    d = reconcile(snapshot(units, [machine(M1, cpu=2), machine(M2, cpu=4)]))
    assert moves(d) == [("a.service", M2)]


def test_over_capacity_machine_keeps_units_in_name_order():
    units = [unit("a.service", "ReserveCPU=1"), unit("b.service", "ReserveCPU=1"), unit("c.service", "ReserveCPU=1")]
    snap = snapshot(units, [machine(M1, cpu=2), machine(M2, cpu=2)],
                    {"a.service": M1, "b.service": M1, "c.service": M1})
    d = reconcile(snap)
    assert removals(d) == [("c.service", M1)]
    assert d.unplaces[0].reason.startswith("over capacity: machine m1 has 0 of 2 cpu free")
    assert moves(d) == [("c.service", M2)]


# --- drain (our extension) ----------------------------------------------------------------------


def test_draining_machine_takes_no_new_units():
    d = reconcile(snapshot([unit("a.service")], [machine(M1, draining=True)]))
    assert d.places == ()
    assert d.unschedulable["a.service"] == "cannot run on machine m1: machine m1 is draining"


def test_draining_moves_one_unit_per_call_until_done():
    units = [unit(f"u{i}.service") for i in range(3)] + [unit("pinned.service", "MachineID=m1")]
    snap = snapshot(units, [machine(M1, draining=True), machine(M2), machine(M3)],
                    {u.name: M1 for u in units})
    final, history = settle(snap)
    for d in history[:-1]:
        assert len(d.unplaces) == 1 and len(d.places) == 1
        assert d.unplaces[0].reason == "machine m1 is draining"
    assert [moves(d) for d in history[:-1]] == [[("u0.service", M2)], [("u1.service", M3)], [("u2.service", M2)]]
    assert final.placements["pinned.service"].machine_id == M1  # nowhere else to go
    assert len(history) == 4


def test_draining_moves_nothing_without_a_feasible_machine():
    units = [unit("a.service", "MachineMetadata=disk=ssd")]
    snap = snapshot(units, [machine(M1, draining=True, disk="ssd"), machine(M2)], {"a.service": M1})
    assert reconcile(snap).empty


def test_draining_moves_machineof_groups_together():
    units = [unit("announce.service", "MachineOf=db.service"), unit("db.service")]
    snap = snapshot(units, [machine(M1, draining=True), machine(M2)],
                    {"announce.service": M1, "db.service": M1})
    d = reconcile(snap)
    assert sorted(removals(d)) == [("announce.service", M1), ("db.service", M1)]
    assert moves(d) == [("db.service", M2), ("announce.service", M2)]
    assert reconcile(applied(snap, d)).empty


def test_draining_group_that_does_not_fit_stays():
    units = [unit("db.service", "ReserveCPU=1"), unit("announce.service", "MachineOf=db.service", "ReserveCPU=1")]
    snap = snapshot(units, [machine(M1, draining=True, cpu=2), machine(M2, cpu=1.5)],
                    {"announce.service": M1, "db.service": M1})
    assert reconcile(snap).empty


# --- misc ---------------------------------------------------------------------------------------


def test_templates_are_not_scheduled():
    d = reconcile(snapshot([unit("web@.service")], [machine(M1)]))
    assert d.places == () and "template" in d.unschedulable["web@.service"]


def test_no_machines():
    d = reconcile(snapshot([unit("a.service")], []))
    assert d.unschedulable == {"a.service": "no machines in the cluster"}


def test_requirements_that_cannot_be_derived_make_the_unit_wait():
    def resolve(u: Unit) -> Requirements:
        if u.name == "bad.service":
            raise InvalidUnitOptions("unit bad.service: MachineID cannot be combined with Global")
        return u.requirements

    units = [unit("bad.service"), unit("good.service")]
    d = reconcile(snapshot(units, [machine(M1)], {"bad.service": M1}), cache=RequirementsCache(resolve))
    assert removals(d) == [("bad.service", M1)]
    assert "MachineID cannot be combined with Global" in d.unschedulable["bad.service"]
    assert moves(d) == [("good.service", M1)]


def test_requirements_cache_reuses_and_prunes():
    calls = []

    def resolve(u: Unit) -> Requirements:
        calls.append(u.name)
        return u.requirements

    cache = RequirementsCache(resolve)
    a, b = unit("a.service"), unit("b.service")
    snap = snapshot([a, b], [machine(M1)])
    reconcile(snap, cache=cache)
    reconcile(snap, cache=cache)
    assert sorted(calls) == ["a.service", "b.service"]
    changed = unit("a.service", service="Environment=X=1\n")
    reconcile(ClusterSnapshot(2, {"a.service": changed}, snap.machines, {}), cache=cache)
    assert calls[-1] == "a.service" and len(cache) == 1


def test_load_order():
    order = LoadOrder()
    for mid, load in (("b", 1), ("a", 1), ("c", 0), ("d", 2)):
        order.add(mid, load)
    assert list(order) == ["c", "a", "b", "d"]
    order.move("c", 0, 2)
    assert list(order) == ["a", "b", "c", "d"] and len(order) == 4
    with pytest.raises(KeyError):
        order.remove("zz", 1)


def test_decisions_apply_ignores_stale_unplace():
    p = Placement("a.service", M2, "h", LAUNCHED)
    d = Decisions(unplaces=(Unplace("a.service", M1, "x"),))
    assert d.apply({"a.service": p}) == {"a.service": p}


def test_same_snapshot_in_any_insertion_order_gives_the_same_decisions():
    units = [unit(f"u{i}.service", *(["Conflicts=u*.service"] if i % 3 == 0 else [])) for i in range(20)]
    machines = [machine(f"m{i}", region="us" if i % 2 else "eu") for i in range(5)]
    a = snapshot(units, machines, {"u1.service": "m1", "u2.service": "gone"})
    b = ClusterSnapshot(1, dict(reversed(list(a.units.items()))), dict(reversed(list(a.machines.items()))),
                        dict(reversed(list(a.placements.items()))))
    assert reconcile(a) == reconcile(b)


# --- property tests -------------------------------------------------------------------------------

def _examples(default: int) -> int:
    """SCHEDULER_EXAMPLES=5000 runs a longer bug hunt."""
    return int(os.environ.get("SCHEDULER_EXAMPLES", examples(default)))


NAMES = ["a.service", "b.service", "c.service", "web@1.service", "web@2.service", "web@3.service",
         "db.service", "side.service"]
MACHINE_IDS = ["m1", "m2", "m3", "m4"]


@st.composite
def clusters(draw, allow_draining: bool = False, allow_links: bool = True):
    machine_ids = draw(st.lists(st.sampled_from(MACHINE_IDS), unique=True, max_size=4))
    machines = []
    for mid in machine_ids:
        metadata = {}
        if draw(st.booleans()):
            metadata["region"] = draw(st.sampled_from(["us", "eu"]))
        if draw(st.booleans()):
            metadata["cores"] = draw(st.sampled_from(["2", "4", "8", "many"]))
        machines.append(machine(mid, cpu=draw(st.sampled_from([0, 2, 3])),
                                draining=allow_draining and draw(st.booleans()), **metadata))
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=8))
    refs = st.sampled_from(names + ["nope.service"])  # peers / replaced / conflicting units
    units = []
    for name in names:
        lines = []
        kind = draw(st.sampled_from(["plain", "meta", "conflict", "id", "peer", "replaces", "global", "cpu", "cpu"]))
        if kind == "meta":
            lines.append("MachineMetadata=" + draw(st.sampled_from(
                ["region=us", "region=us region=eu", "region!=eu", "cores>=4", "region=eu cores<8"])))
        elif kind == "conflict":
            lines.append("Conflicts=" + draw(st.one_of(
                refs, st.sampled_from(["web@*.service", "*.service", "db.service c.service"]))))
        elif kind == "id":
            lines.append("MachineID=" + draw(st.sampled_from(MACHINE_IDS + ["nope"])))
        elif kind == "peer" and allow_links:
            lines.append("MachineOf=" + draw(refs))
        elif kind == "replaces" and allow_links:
            lines.append("Replaces=" + draw(st.one_of(refs, st.just("web@*.service"))))
        elif kind == "global":
            lines.append("Global=true")
            if draw(st.booleans()):
                lines.append("MachineMetadata=region=us")
            if draw(st.booleans()):
                lines.append("Conflicts=" + draw(refs))
        elif kind == "cpu":
            lines.append("ReserveCPU=" + draw(st.sampled_from(["1", "1.5", "2"])))
        desired = draw(st.sampled_from(["launched", "launched", "loaded", "inactive"]))
        units.append(unit(name, *lines, desired=desired))
    placed = {}
    for name in draw(st.lists(st.sampled_from(names), unique=True)) if names else []:
        placed[name] = draw(st.sampled_from(machine_ids + ["gone"]))
    snap = snapshot(units, machines, placed)
    if placed and draw(st.booleans()):  # some placements carry a stale hash / desired state
        stale = {n: Placement(n, p.machine_id, "f" * 40, LOADED) for n, p in snap.placements.items()}
        snap = ClusterSnapshot(1, snap.units, snap.machines, stale)
    return snap


def _reqs(u: Unit) -> Requirements:
    return requirements_of(u.file, u.name)


def _conflict(a: str, ra: Requirements, b: str, rb: Requirements) -> bool:
    return a != b and (any(glob_match(p, b) for p in ra.conflicts) or any(glob_match(p, a) for p in rb.conflicts))


def _replaces(a: str, ra: Requirements, b: str) -> bool:
    return a != b and any(glob_match(p, b) for p in ra.replaces)


def _globals_on(m: Machine, snap: ClusterSnapshot) -> dict[str, Requirements]:
    """Independent oracle: globals run where metadata matches, the first of conflicting ones."""
    running: dict[str, Requirements] = {}
    for name in sorted(snap.units):
        u = snap.units[name]
        r = _reqs(u)
        if not r.is_global or u.desired_state is INACTIVE:
            continue
        if not metadata_matches(m.metadata, r.metadata):
            continue
        if any(_conflict(name, r, other, ro) for other, ro in running.items()):
            continue
        running[name] = r
    return running


def _violations(name: str, mid: str, schedule: dict[str, str], snap: ClusterSnapshot) -> list[str]:
    """Why `name` may not run on `mid` next to the other placements (oracle, not the engine)."""
    u = snap.units[name]
    r = _reqs(u)
    m = snap.machines.get(mid)
    if m is None:
        return ["machine gone"]
    found = []
    if r.machine_id and not m.matches_id(r.machine_id):
        found.append("machine id")
    if not metadata_matches(m.metadata, r.metadata):
        found.append("metadata")
    globals_here = _globals_on(m, snap)
    others = {n: _reqs(snap.units[n]) for n, where in schedule.items() if where == mid and n != name}
    for peer in r.machine_of:
        if peer not in others and peer not in globals_here:
            found.append(f"peer {peer}")
    for other, ro in {**others, **globals_here}.items():
        if _conflict(name, r, other, ro):
            found.append(f"conflict {other}")
    for other, ro in others.items():
        if _replaces(other, ro, name):
            found.append(f"replaced by {other}")
    if m.capacity.cpu > 0 and r.cpu > 0:
        used = sum(x.cpu for x in others.values()) + sum(x.cpu for x in globals_here.values())
        if used + r.cpu > m.capacity.cpu + 1e-9:
            found.append("cpu")
    return found


def _wants_machine(u: Unit) -> bool:
    return u.desired_state is not INACTIVE and not _reqs(u).is_global


@settings(max_examples=_examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(allow_draining=True))
def test_property_no_placement_violates_a_constraint(snap):
    d = reconcile(snap)
    schedule = schedule_after(snap, d)
    for name, mid in schedule.items():
        assert name in snap.units and _wants_machine(snap.units[name]), name
        assert _violations(name, mid, schedule, snap) == [], (name, mid, schedule)
        if snap.machines[mid].draining:
            assert snap.placements.get(name) and snap.placements[name].machine_id == mid
    for name, u in snap.units.items():
        if _wants_machine(u):
            assert (name in schedule) != (name in d.unschedulable), name
            if name in d.unschedulable:
                assert d.unschedulable[name]
    for place in d.places:  # placements carry the unit's hash and desired state
        u = snap.units[place.placement.name]
        assert (place.placement.hash, place.placement.desired_state) == (u.hash, u.desired_state)
    for unplace in d.unplaces:
        assert snap.placements[unplace.name].machine_id == unplace.machine_id and unplace.reason


@settings(max_examples=_examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(allow_draining=True))
def test_property_every_placeable_unit_is_placed(snap):
    d = reconcile(snap)
    schedule = schedule_after(snap, d)
    for name in d.unschedulable:
        r = _reqs(snap.units[name])
        if r.machine_of or r.replaces or re.search(r"@\.", name):
            continue
        for mid, m in snap.machines.items():
            if m.draining:
                continue
            assert _violations(name, mid, schedule, snap) != [], (name, mid, d.unschedulable[name], schedule)


@settings(max_examples=_examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters())
def test_property_deterministic_and_stable(snap):
    d = reconcile(snap)
    shuffled = ClusterSnapshot(snap.revision, dict(reversed(list(snap.units.items()))),
                               dict(reversed(list(snap.machines.items()))),
                               dict(reversed(list(snap.placements.items()))))
    assert reconcile(shuffled) == d
    again = reconcile(applied(snap, d))
    assert again.empty, (d, again)
    assert set(again.unschedulable) == set(d.unschedulable)


@settings(max_examples=_examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(allow_draining=True, allow_links=False))
def test_property_drain_moves_one_unit_per_call_and_settles(snap):
    first = reconcile(snap)
    assert sum("draining" in u.reason for u in first.unplaces) <= 1
    snap = applied(snap, first)
    for _ in range(len(snap.units) + 2):
        d = reconcile(snap)
        if d.empty:
            break
        assert len(d.unplaces) == 1 and len(d.places) == 1, d
        (out,), (into,) = d.unplaces, d.places
        assert out.name == into.placement.name and "draining" in out.reason
        assert snap.machines[out.machine_id].draining and not snap.machines[into.placement.machine_id].draining
        snap = applied(snap, d)
    else:
        raise AssertionError("drain did not settle")
