"""Incremental scheduling: place new plain units without walking the whole cluster. Pure.

`reconcile(snapshot)` (fleetd.engine.scheduler) walks every unit and placement: about 0.1 s of
CPU at 10,000 units, for every pass, also when one unit was added. `IncrementalPlanner` keeps
what a pass needs to place a *new plain unit* the way reconcile() would, and answers
`plan(snapshot)` with the same Decisions as `reconcile(snapshot)`, or None when it cannot be
sure (then the engine runs reconcile()). reconcile() stays the oracle: tests/
test_engine_incremental.py checks `plan(s) in (None, reconcile(s))` on random clusters.

It answers only when all of this holds, which makes reconcile()'s answer easy to know:

* the base: a snapshot on which reconcile() decided nothing and left nothing waiting (every
  non-inactive unit placed, none unschedulable), with no active global unit, no unit using
  MachineOf, Conflicts or Replaces, and no unit on a draining machine. Then pass 1 keeps every
  placement as it is, no pattern can match a new name, and the drain has nothing to do;
* since the base: machines and placements unchanged (the planner's own decisions aside, see
  `advance`), existing units unchanged; only new units, each non-template, valid, non-global,
  with no MachineID, MachineOf, MachineMetadata, Conflicts, Replaces or cpu/memory reservation
  (or desired inactive: nothing to do for those).

Then pass 2 places the new units in name order, each on the least loaded non-draining machine
(load = units placed there; ties to the lower machine ID), the load growing by one each time:
exactly what `_ordered(())` and `_check` do for such a unit.

Finding what changed since the base: `plan(snapshot)` compares the snapshot with the base
(every unit, placement and machine: O(cluster), ~2 ms at 10,000 units); `plan(snapshot,
changes)` trusts `changes` (the names the engine's watch-fed view saw change since the previous
pass, fleetd.engine.view) and looks only at those: O(changes). The caller then owes the planner
every pass's changes: a pass that neither plans nor remembers must `forget()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from fleetd.constraints import RequirementsCache
from fleetd.unit.name import is_template_name
from fleetd.engine.decisions import Decisions, Place
from fleetd.engine.pool import LoadOrder
from fleetd.model import ClusterSnapshot, DesiredState, Machine, Placement, Unit


#: reconcile()'s reason for placing a unit that was not scheduled, per desired state
_REASONS = {state: f"desired state {state.value} and unit not scheduled" for state in DesiredState}


def _same(new: Mapping, old: Mapping) -> bool:
    """Mappings equal, cheaply when the values are the same objects (the engine's view reuses
    them): dict equality runs in C and takes identical values as equal without calling __eq__."""
    return new is old or (len(new) == len(old) and new == old)


@dataclass
class Changes:
    """What changed in a view of the cluster since the previous pass: unit names (added, changed
    or removed), placement names, and whether any machine did."""

    units: set[str] = field(default_factory=set)
    placements: set[str] = field(default_factory=set)
    machines: bool = False


class IncrementalPlanner:
    def __init__(self, cache: RequirementsCache) -> None:
        self.cache = cache
        self._units: Mapping[str, Unit] | None = None
        self._machines: Mapping[str, Machine] = {}
        self._placements: Mapping[str, Placement] = {}
        self._written: dict[str, Placement] = {}  # the last plan's placements, over _placements
        self._order: LoadOrder | None = None
        self._load: dict[str, int] = {}

    @property
    def ready(self) -> bool:
        return self._units is not None

    def forget(self) -> None:
        self._units = None
        self._written = {}
        self._order = None
        self._load = {}

    def remember(self, snapshot: ClusterSnapshot, decisions: Decisions) -> None:
        """After a full reconcile(snapshot) that returned `decisions`: keep it as the base if it can be."""
        self.forget()
        if not decisions.empty or decisions.unschedulable:
            return
        machines = snapshot.machines
        for unit in snapshot.units.values():
            info = self.cache.info(unit)
            reqs = info.requirements
            if reqs is None:
                if unit.desired_state is not DesiredState.INACTIVE:
                    return
                continue
            if reqs.machine_of or reqs.conflicts or reqs.replaces:
                return
            if reqs.is_global and unit.desired_state is not DesiredState.INACTIVE:
                return
        load: dict[str, int] = {mid: 0 for mid, m in machines.items() if not m.draining}
        for placement in snapshot.placements.values():
            if placement.machine_id not in load:
                return  # a unit on a draining (or unknown) machine: the drain may act
            load[placement.machine_id] += 1
        order = LoadOrder()
        for mid, n in load.items():
            order.add(mid, n)
        self._units, self._machines, self._placements = snapshot.units, machines, snapshot.placements
        self._order, self._load = order, load

    def plan(self, snapshot: ClusterSnapshot, changes: Changes | None = None) -> Decisions | None:
        """reconcile(snapshot)'s Decisions if the base allows knowing them cheaply, else None.
        With `changes` (everything that changed since the previous plan or remember), only
        those names are looked at."""
        if self._units is None or not self._order:
            return None
        units, base = snapshot.units, self._units
        if changes is None:
            placements = {**self._placements, **self._written} if self._written else self._placements
            if not _same(snapshot.machines, self._machines) or not _same(snapshot.placements, placements):
                return None
            if len(units) < len(base):
                return None
            # every unit of the base still there and equal (C-level, identical values taken as equal)
            if not base.items() <= units.items():
                return None
            new = sorted(units.keys() - base.keys()) if len(units) != len(base) else []
        else:
            # the schedule: the base's, plus this planner's last decisions, nothing else
            if changes.machines or not changes.placements <= self._written.keys():
                return None
            got = snapshot.placements
            if any(got.get(name) != placement for name, placement in self._written.items()):
                return None
            if any(name in base for name in changes.units):
                return None   # a unit of the base changed or went
            new = sorted(name for name in changes.units if name in units)
        todo = []
        info = self.cache.info
        for name in new:
            unit = units[name]
            if unit.desired_state is DesiredState.INACTIVE:
                continue
            unit_info = info(unit)
            reqs = unit_info.requirements
            if (reqs is None or is_template_name(name) or reqs.is_global or reqs.machine_id or reqs.machine_of
                    or reqs.metadata or reqs.conflicts or reqs.replaces or reqs.cpu > 0 or reqs.memory > 0):
                return None
            todo.append((unit, unit_info.hash))
        places = []
        order, load = self._order, self._load
        for unit, unit_hash in todo:
            mid = order.first()
            n = load[mid]
            order.move(mid, n, n + 1)
            load[mid] = n + 1
            state = unit.desired_state
            places.append(Place(Placement(unit.name, mid, unit_hash, state), _REASONS[state]))
        decisions = Decisions(places=tuple(places))
        # the new base: this snapshot with these decisions written (what the next pass should see)
        self._units = units
        self._placements = snapshot.placements
        self._written = {p.placement.name: p.placement for p in places}
        return decisions
