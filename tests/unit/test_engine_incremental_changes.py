"""The incremental planner told what changed (the engine view's notes) decides as it does when
it compares whole snapshots, and so as reconcile(): same decisions or no answer."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from _depth import examples
from fleetd.constraints import RequirementsCache
from fleetd.engine.incremental import Changes, IncrementalPlanner
from fleetd.engine.scheduler import reconcile
from fleetd.model import ClusterSnapshot
from tests.unit.test_engine_incremental import clusters
from tests.unit.test_scheduler import applied, machine, settle, snapshot, unit


def changes_between(old: ClusterSnapshot, new: ClusterSnapshot) -> Changes:
    """What a watch-fed view would have noted between two snapshots."""
    def names(a, b):
        return {n for n in a.keys() | b.keys() if a.get(n) != b.get(n)}
    return Changes(names(old.units, new.units), names(old.placements, new.placements), old.machines != new.machines)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters())
def test_told_changes_decides_as_whole_comparison(case):
    base, rounds = case
    told, compared = IncrementalPlanner(RequirementsCache()), IncrementalPlanner(RequirementsCache())
    for planner in (told, compared):
        planner.remember(base, reconcile(base))
    snap = base
    for batch in rounds:
        new = ClusterSnapshot(snap.revision + 1, {**snap.units, **{u.name: u for u in batch}},
                              snap.machines, snap.placements)
        oracle = reconcile(new)
        by_changes, by_comparison = told.plan(new, changes_between(snap, new)), compared.plan(new)
        assert by_changes == by_comparison
        assert by_changes is None or by_changes == oracle
        if by_changes is None:
            for planner in (told, compared):
                planner.remember(new, oracle)
        snap = applied(new, oracle)
        # the view notes the engine's own writes too: the next pass is told them
        if by_changes is not None:
            follow = ClusterSnapshot(snap.revision + 1, snap.units, snap.machines, snap.placements)
            assert told.plan(follow, changes_between(new, follow)) == compared.plan(follow) == reconcile(follow)


def test_changes_outside_its_scope_get_no_answer():
    base, _ = settle(snapshot([unit(f"a-{i}.service") for i in range(4)], [machine("m1"), machine("m2")]))
    planner = IncrementalPlanner(RequirementsCache())
    planner.remember(base, reconcile(base))
    plus = ClusterSnapshot(2, {**base.units, "b.service": unit("b.service")}, base.machines, base.placements)
    planned = planner.plan(plus, Changes(units={"b.service"}))
    assert planned == reconcile(plus) and len(planned.places) == 1
    after = applied(plus, planned)
    # a placement it did not write changed: no answer
    moved = {**after.placements}
    moved["a-0.service"] = moved["a-1.service"].__class__("a-0.service", "m2" if moved["a-0.service"].machine_id == "m1"
                                                          else "m1", moved["a-0.service"].hash,
                                                          moved["a-0.service"].desired_state)
    other = ClusterSnapshot(3, after.units, after.machines, moved)
    assert planner.plan(other, Changes(placements={"b.service", "a-0.service"})) is None
    # a unit of the base changed, or a machine: no answer either
    planner.remember(after, reconcile(after))
    assert planner.plan(after, Changes(units={"a-1.service"})) is None
    planner.remember(after, reconcile(after))
    assert planner.plan(after, Changes(machines=True)) is None
    planner.remember(after, reconcile(after))
    assert planner.plan(after, Changes()) == reconcile(after)  # nothing changed: nothing to do
