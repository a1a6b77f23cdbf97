"""The incremental planner against its oracle, the pure reconcile(): same decisions or no answer."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _depth import examples
from fleetd.constraints import RequirementsCache
from fleetd.engine.incremental import IncrementalPlanner
from fleetd.engine.scheduler import reconcile
from fleetd.model import ClusterSnapshot
from tests.unit.test_scheduler import applied, machine, settle, snapshot, unit

# unit shapes: mostly plain, some the planner must refuse (or, in the base, refuse to remember)
SHAPES = [(), (), (), ("Conflicts=u-1*",), ("MachineOf=u-02.service",), ("Replaces=u-03.service",),
          ("Global=true",), ("MachineMetadata=role=web",), ("MachineID=m1",)]
EXTRA = ["", "", "MemoryMax=64M\n"]


@st.composite
def clusters(draw):
    ms = [machine(f"m{i}", memory=draw(st.sampled_from([0, 1 << 30])),
                  draining=draw(st.booleans()) and i > 0,
                  **({"role": "web"} if draw(st.booleans()) else {}))
          for i in range(draw(st.integers(1, 5)))]
    names = draw(st.lists(st.integers(0, 30), max_size=12, unique=True))
    units = [unit(f"u-{i:02d}.service", *draw(st.sampled_from(SHAPES)), service=draw(st.sampled_from(EXTRA)),
                  desired=draw(st.sampled_from(["launched", "launched", "loaded", "inactive"])))
             for i in names]
    base, _ = settle(snapshot(units, ms))
    taken = {u.name for u in units}
    new = []
    for _ in range(draw(st.integers(1, 3))):       # rounds of additions
        batch = draw(st.lists(st.integers(31, 99), max_size=4, unique=True))
        new.append([unit(f"u-{i:02d}.service" if draw(st.integers(0, 9)) else f"u-{i:02d}@.service",
                         *draw(st.sampled_from(SHAPES[:3] + SHAPES[3:] * draw(st.integers(0, 1)))),
                         desired=draw(st.sampled_from(["launched", "loaded", "inactive"])))
                    for i in batch if f"u-{i:02d}.service" not in taken])
        taken.update(u.name for u in new[-1])
    return base, new


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters())
def test_plan_is_reconcile_or_nothing(case):
    base, rounds = case
    planner = IncrementalPlanner(RequirementsCache())
    planner.remember(base, reconcile(base))
    snap = base
    for batch in rounds:
        snap = ClusterSnapshot(snap.revision + 1, {**snap.units, **{u.name: u for u in batch}},
                               snap.machines, snap.placements)
        oracle = reconcile(snap)
        planned = planner.plan(snap)
        if planned is None:
            planner.remember(snap, oracle)       # what the engine does after a full pass
        else:
            assert planned == oracle
        snap = applied(snap, oracle)


def test_new_plain_units_go_where_reconcile_puts_them():
    base, _ = settle(snapshot([unit(f"a-{i}.service") for i in range(5)], [machine("m1"), machine("m2"),
                                                                            machine("m3", draining=True)]))
    planner = IncrementalPlanner(RequirementsCache())
    planner.remember(base, reconcile(base))
    assert planner.ready
    snap = ClusterSnapshot(2, {**base.units, **{f"b-{i}.service": unit(f"b-{i}.service") for i in range(3)}},
                           base.machines, base.placements)
    planned = planner.plan(snap)
    assert planned is not None and planned == reconcile(snap) and len(planned.places) == 3
    assert {p.placement.machine_id for p in planned.places} <= {"m1", "m2"}   # not the draining one
    # the next pass sees the planner's own writes: it keeps answering
    after = applied(snap, planned)
    more = ClusterSnapshot(3, {**after.units, "c.service": unit("c.service")}, after.machines, after.placements)
    assert planner.plan(more) == reconcile(more)
    # anything else changed (here: a machine left): no answer, the engine runs reconcile()
    gone = ClusterSnapshot(4, more.units, {"m1": more.machines["m1"]}, more.placements)
    assert planner.plan(gone) is None


def test_refuses_constrained_units_and_bases_with_patterns():
    base, _ = settle(snapshot([unit("a.service", "Conflicts=b*")], [machine("m1"), machine("m2")]))
    planner = IncrementalPlanner(RequirementsCache())
    planner.remember(base, reconcile(base))
    assert not planner.ready           # a Conflicts= pattern could match a new name
    base, _ = settle(snapshot([unit("a.service")], [machine("m1")]))
    planner.remember(base, reconcile(base))
    snap = ClusterSnapshot(2, {**base.units, "b.service": unit("b.service", "MachineID=m1")},
                           base.machines, base.placements)
    assert planner.plan(snap) is None
