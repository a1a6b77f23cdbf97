"""The engine's functional core: one reconcile pass over a cluster snapshot, no I/O.

`reconcile(snapshot)` returns the schedule changes fleet's engine would make
(engine/reconciler.go, engine/scheduler.go, agent/state.go AbleToRun), in fleet's order:

Pass 1, over the existing placements (peers before the units that follow them):
  unplace when the unit is gone, is global, is desired inactive, when its machine went away,
  when the machine no longer satisfies MachineID or MachineMetadata (metadata may change at
  runtime), when a MachineOf peer is no longer on that machine, when it conflicts with a unit
  kept earlier or with a global unit running there, when the machine is over capacity, and
  when a unit on the same machine replaces it. A kept placement whose hash or desired state
  differs from the unit is re-written in place.

Pass 2, over the units without a machine whose desired state is loaded or launched, in name
  order except that MachineOf peers come before the units that follow them: each goes to the
  least-loaded feasible machine (load = placed units + global units running there; ties go to
  the lower machine ID). Feasible, in fleet's order of checks: MachineID (full ID or a unique
  8-character short ID), MachineMetadata, MachineOf (every peer on that machine), Conflicts
  (symmetric globs, global units included), Replaces, then our extensions: the unit's
  cpu/memory reservation must fit in the machine's capacity (when known), and a draining
  machine takes no new units. Placing a unit on a machine holding a unit it replaces moves
  that unit (and whatever follows it by MachineOf) to its own feasible machine, if any. The
  in-memory load is updated after every decision so that later ones see it.

Drain: after pass 2, at most one unit (with the units that follow it by MachineOf) leaves a
  draining machine per call, and only if a feasible machine takes all of them.

Differences from fleet, on purpose: a displaced (replaced) unit keeps its constraints; a unit
whose MachineID prefix matches several machines waits instead of picking one; a unit is
displaced at most once per pass (so Replaces cycles longer than two terminate); every waiting
unit gets a reason.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Iterable, Sequence

from fleetd.constraints import (
    EQ_OPS,
    RequirementsCache,
    UnitInfo,
    active_globals,
    format_metadata,
    globals_matching,
    global_units_for,
    metadata_matches,
)
from fleetd.engine.decisions import Decisions, Place, Unplace
from fleetd.engine.pool import LoadOrder
from fleetd.model import ClusterSnapshot, DesiredState, Machine, Placement
from fleetd.unit.name import is_template_name
from fleetd.unit.requirements import MetadataConstraint, Requirements

__all__ = [
    "Decisions",
    "Place",
    "RequirementsCache",
    "Unplace",
    "global_units_for",
    "reconcile",
]

_EPSILON = 1e-9
#: Metadata-constrained candidate sets up to this size are sorted on demand instead of
#: being kept in a LoadOrder of their own.
_SMALL_SET = 48

class Category(enum.Enum):
    """Why a machine cannot take a unit. Declared in the order of `_Reconciler.CHECKS` (the
    order the checks run in), which is also the order an explanation lists them in; the
    value is the explanation's text ("3 machines <text>")."""

    DRAINING = "are draining"
    MACHINE_ID = "do not match its MachineID"
    METADATA = "do not satisfy its MachineMetadata"
    PEER = "do not hold its MachineOf peers"
    REPLACE = "hold a unit that replaces it"
    CONFLICT = "hold a conflicting unit"
    RESOURCES = "lack free cpu/memory"
    UNKNOWN = "cannot run it"  # every check passed (not a check: a machine the index ruled out)


class _Attempt:
    """One unit against one machine: what the checks need and what they find.

    `keep` is pass 1 (an existing placement: may it stay?), else a placement: `full=False`
    skips MachineID/MachineMetadata when the candidates already satisfy them,
    `conflicts_checked=True` skips Conflicts when the caller used the conflict index.
    """

    __slots__ = ("name", "reqs", "st", "keep", "full", "allow_displace", "conflicts_checked", "displaced")

    def __init__(self, name: str, reqs: Requirements, st: "_MachineState", *, keep: bool = False,
                 full: bool = True, allow_displace: bool = True, conflicts_checked: bool = False) -> None:
        self.name = name
        self.reqs = reqs
        self.st = st
        self.keep = keep
        self.full = full
        self.allow_displace = allow_displace
        self.conflicts_checked = conflicts_checked
        self.displaced: list[str] = []


def reconcile(snapshot: ClusterSnapshot, *, cache: RequirementsCache | None = None) -> Decisions:
    """Decide the schedule changes for `snapshot`. Pure and deterministic.

    Pass the same `cache` on every call to avoid re-deriving requirements and hashes of
    unchanged units.
    """
    cache = cache if cache is not None else RequirementsCache()
    decisions = _Reconciler(snapshot, cache).run()
    cache.prune(snapshot.units)
    return decisions


class _MachineState:
    """The engine's in-memory view of one machine during a pass."""

    __slots__ = ("machine", "id", "short", "draining", "cap_cpu", "cap_memory", "units",
                 "globals", "conflictors", "replacers", "cpu", "memory", "load", "orders")

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.id = machine.id
        self.short = machine.short_id
        self.draining = machine.draining
        self.cap_cpu = machine.capacity.cpu
        self.cap_memory = machine.capacity.memory
        self.units: dict[str, Requirements] = {}        # scheduled units placed here
        self.globals: dict[str, Requirements] = {}      # global units running here
        self.conflictors: dict[str, tuple[str, ...]] = {}  # units here with Conflicts=
        self.replacers: dict[str, tuple[str, ...]] = {}    # scheduled units here with Replaces=
        self.cpu = 0.0
        self.memory = 0
        self.load = 0
        self.orders: list[LoadOrder] = []               # the load orders this machine is in

    def holds(self, name: str) -> bool:
        return name in self.units or name in self.globals


class _Reconciler:
    def __init__(self, snapshot: ClusterSnapshot, cache: RequirementsCache) -> None:
        self.units = snapshot.units
        self.original = snapshot.placements
        self.match = cache.globs
        self.info: dict[str, UnitInfo] = {name: cache.info(unit) for name, unit in self.units.items()}

        globals_sorted = active_globals(self.units.values(), cache)
        self.global_names = {name for name, _ in globals_sorted}
        # Requirements of the units the engine schedules (valid, non-global).
        self.reqs: dict[str, Requirements] = {
            name: info.requirements for name, info in self.info.items()
            if info.requirements is not None and not info.requirements.is_global
        }
        self.dependents: dict[str, list[str]] = {}
        for name in sorted(self.reqs):
            for peer in self.reqs[name].machine_of:
                self.dependents.setdefault(peer, []).append(name)

        # Conflict index: for every Conflicts= glob in use, the machines holding a unit whose
        # name matches it ("targets") and the machines holding a unit that declares it
        # ("declarers"), with counts. A search then skips conflicting machines in O(1).
        patterns = {p for reqs in self.reqs.values() for p in reqs.conflicts}
        patterns.update(p for _, reqs in globals_sorted for p in reqs.conflicts)
        self.patterns = sorted(patterns)
        self.targets: dict[str, dict[str, int]] = {p: {} for p in self.patterns}
        self.declarers: dict[str, dict[str, int]] = {p: {} for p in self.patterns}
        self.matched: dict[str, tuple[str, ...]] = {}
        replace_patterns = {p for reqs in self.reqs.values() for p in reqs.replaces}
        self.replace_patterns = sorted(replace_patterns)
        self.replace_matched: dict[str, tuple[str, ...]] = {}
        # Failed searches, by what the outcome depends on; valid until a unit leaves a machine.
        self.failures: dict[tuple, tuple[int, str]] = {}
        self.detaches = 0

        self.ms: dict[str, _MachineState] = {}
        self.short_index: dict[str, list[str]] = {}
        self.meta_index: dict[tuple[str, str], list[str]] = {}
        per_metadata: dict[tuple, list[tuple[str, Requirements]]] = {}
        globals_use_id = any(reqs.machine_id for _, reqs in globals_sorted)
        for machine_id in sorted(snapshot.machines):
            machine = snapshot.machines[machine_id]
            st = _MachineState(machine)
            self.ms[machine_id] = st
            self.short_index.setdefault(st.short, []).append(machine_id)
            for item in machine.metadata.items():
                self.meta_index.setdefault(item, []).append(machine_id)
            if globals_sorted:
                key = (machine_id if globals_use_id else None, tuple(sorted(machine.metadata.items())))
                running = per_metadata.get(key)
                if running is None:
                    running = per_metadata[key] = globals_matching(machine, globals_sorted, self.match)
                for name, reqs in running:
                    st.globals[name] = reqs
                    if reqs.conflicts:
                        st.conflictors[name] = reqs.conflicts
                    self._index(name, reqs, machine_id, 1)
                    st.cpu += reqs.cpu
                    st.memory += reqs.memory
                st.load = len(running)

        self.where: dict[str, str] = {}                  # unit -> machine, as decided so far
        self.orders: dict[tuple[MetadataConstraint, ...], LoadOrder | tuple[str, ...]] = {}
        self.unplace_log: dict[str, str] = {}            # original placements left, with reason
        self.place_log: dict[str, None] = {}             # units (re)placed, in decision order
        self.displaced: set[str] = set()
        self.evicted = False
        self.journal: list[tuple] | None = None
        self.unschedulable: dict[str, str] = {}

    # -- entry point ----------------------------------------------------------------------

    def run(self) -> Decisions:
        self._pass1()
        self._pass2()
        self._drain()
        return self._decisions()

    # -- state changes --------------------------------------------------------------------

    def _matching_patterns(self, name: str) -> tuple[str, ...]:
        """The Conflicts= globs in use that match `name` (cached for the pass)."""
        found = self.matched.get(name)
        if found is None:
            match = self.match
            found = self.matched[name] = tuple(p for p in self.patterns if match(p, name))
        return found

    def _failure_key(self, name: str, reqs: Requirements, allow_displace: bool) -> tuple | None:
        """What a failed search of `name` depends on besides the machines' state, or None.

        Placements only take room away, so a unit that found no machine fails again until a
        unit leaves a machine; units with the same key (e.g. instances of one template) share
        the outcome. A placement can help a unit waiting for its MachineOf peers: no key.
        """
        if any(peer not in self.global_names for peer in reqs.machine_of):
            return None
        replaced_by = self.replace_matched.get(name)
        if replaced_by is None:
            match = self.match
            replaced_by = self.replace_matched[name] = tuple(p for p in self.replace_patterns if match(p, name))
        return reqs, self._matching_patterns(name), replaced_by, allow_displace

    def _index(self, name: str, reqs: Requirements, machine_id: str, delta: int) -> None:
        for table, keys in ((self.targets, self._matching_patterns(name)), (self.declarers, reqs.conflicts)):
            for pattern in keys:
                counts = table[pattern]
                count = counts.get(machine_id, 0) + delta
                if count:
                    counts[machine_id] = count
                else:
                    del counts[machine_id]

    def _conflicting_machines(self, name: str, reqs: Requirements) -> list[dict[str, int]]:
        """Tables whose keys are the machines holding a unit that conflicts with `name`."""
        tables = [self.targets[p] for p in reqs.conflicts]
        tables += [self.declarers[p] for p in self._matching_patterns(name)]
        return [t for t in tables if t]

    def _set_load(self, st: _MachineState, load: int) -> None:
        for order in st.orders:
            order.move(st.id, st.load, load)
        st.load = load

    def _attach(self, name: str, reqs: Requirements, st: _MachineState) -> None:
        st.units[name] = reqs
        if reqs.conflicts:
            st.conflictors[name] = reqs.conflicts
        if reqs.replaces:
            st.replacers[name] = reqs.replaces
        st.cpu += reqs.cpu
        st.memory += reqs.memory
        self._set_load(st, st.load + 1)
        self._index(name, reqs, st.id, 1)
        self.where[name] = st.id
        if self.journal is not None:
            self.journal.append((True, name, st, reqs))

    def _detach(self, name: str) -> _MachineState:
        st = self.ms[self.where.pop(name)]
        reqs = st.units.pop(name)
        st.conflictors.pop(name, None)
        st.replacers.pop(name, None)
        st.cpu -= reqs.cpu
        st.memory -= reqs.memory
        self._set_load(st, st.load - 1)
        self._index(name, reqs, st.id, -1)
        self.detaches += 1
        if self.journal is not None:
            self.journal.append((False, name, st, reqs))
        return st

    def _rollback(self) -> None:
        journal, self.journal = self.journal or [], None
        for attached, name, st, reqs in reversed(journal):
            if attached:
                self._detach(name)
            else:
                self._attach(name, reqs, st)

    def _note_placed(self, name: str) -> None:
        self.place_log.pop(name, None)
        self.place_log[name] = None

    def _note_unplaced(self, name: str, machine_id: str, reason: str) -> None:
        original = self.original.get(name)
        if original is not None and original.machine_id == machine_id and name not in self.unplace_log:
            self.unplace_log[name] = reason

    def _evict(self, name: str, reason: str, queue: deque[str] | None) -> None:
        """Take `name` off its machine, with every unit that follows it there by MachineOf."""
        st = self._detach(name)
        self.evicted = True
        self._note_unplaced(name, st.id, reason)
        self.place_log.pop(name, None)
        if queue is not None:
            queue.append(name)
        for dependent in self.dependents.get(name, ()):
            if self.where.get(dependent) == st.id:
                self._evict(dependent, f"MachineOf peer {name} left machine {st.short}", queue)

    # -- ordering -------------------------------------------------------------------------

    def _peer_order(self, names: Sequence[str]) -> list[str]:
        """`names` in the given order, except that MachineOf peers come first (cycles: as found)."""
        members = set(names)
        state: dict[str, bool] = {}  # False: on the stack, True: done
        out: list[str] = []
        for root in names:
            if root in state:
                continue
            state[root] = False
            stack = [(root, iter(self.reqs[root].machine_of))]
            while stack:
                node, peers = stack[-1]
                for peer in peers:
                    if peer in members and peer not in state:
                        state[peer] = False
                        stack.append((peer, iter(self.reqs[peer].machine_of)))
                        break
                else:
                    stack.pop()
                    state[node] = True
                    out.append(node)
        return out

    # -- checks ---------------------------------------------------------------------------

    def _conflict_on(self, name: str, reqs: Requirements, st: _MachineState,
                     skip: Iterable[str] = ()) -> str | None:
        """The first unit on `st` that conflicts with `name` (either direction), if any."""
        match = self.match
        for pattern in reqs.conflicts:
            if match.is_literal(pattern):
                if pattern != name and st.holds(pattern) and pattern not in skip:
                    return pattern
                continue
            for other in st.units:
                if other != name and other not in skip and match(pattern, other):
                    return other
            for other in st.globals:
                if other != name and match(pattern, other):
                    return other
        for other, patterns in st.conflictors.items():
            if other != name and other not in skip and match.any(patterns, name):
                return other
        return None

    def _fits(self, reqs: Requirements, st: _MachineState, freed_cpu: float = 0.0,
              freed_memory: int = 0) -> str | None:
        """None when the reservation fits in what is free on `st`, else why not."""
        if reqs.cpu > 0 and st.cap_cpu > 0:
            free = st.cap_cpu - st.cpu + freed_cpu
            if reqs.cpu > free + _EPSILON:
                return f"machine {st.short} has {max(free, 0.0):g} of {st.cap_cpu:g} cpu free, needs {reqs.cpu:g}"
        if reqs.memory > 0 and st.cap_memory > 0:
            free_memory = st.cap_memory - st.memory + freed_memory
            if reqs.memory > free_memory:
                return (f"machine {st.short} has {max(free_memory, 0)} of {st.cap_memory} bytes of memory free, "
                        f"needs {reqs.memory}")
        return None

    # The checks, one per category, each returning why `a` fails (None: it passes). A
    # placement runs them all in this order; pass 1 runs MachineID and MachineMetadata on every
    # placement first, then the others on the survivors, peers first (`_first_failure`).

    def _check_draining(self, a: _Attempt) -> str | None:
        if a.keep or not a.st.draining:  # a kept unit leaves a draining machine in _drain
            return None
        return f"machine {a.st.short} is draining"

    def _check_machine_id(self, a: _Attempt) -> str | None:
        wanted = a.reqs.machine_id
        if not a.full or not wanted or a.st.machine.matches_id(wanted):
            return None
        return f"machine {a.st.short} does not match MachineID={wanted}"

    def _check_metadata(self, a: _Attempt) -> str | None:
        if not a.full or not a.reqs.metadata or metadata_matches(a.st.machine.metadata, a.reqs.metadata):
            return None
        verb = "no longer satisfies" if a.keep else "does not satisfy"
        return f"machine {a.st.short} {verb} {format_metadata(a.reqs.metadata)}"

    def _check_peers(self, a: _Attempt) -> str | None:
        for peer in a.reqs.machine_of:
            if not a.st.holds(peer):
                where = "is no longer on" if a.keep else "is not on"
                return f"MachineOf peer {peer} {where} machine {a.st.short}"
        return None

    def _check_replace(self, a: _Attempt) -> str | None:
        """A unit on the machine replaces this one (or they replace each other); for a
        placement, the units this one replaces are to be displaced (`a.displaced`)."""
        name, reqs, st, match = a.name, a.reqs, a.st, self.match
        for other, patterns in st.replacers.items():
            if other != name and match.any(patterns, name):
                if match.any(reqs.replaces, other):
                    return f"{other} on {st.short} and it replace each other"
                if not a.keep:
                    return f"{other} on {st.short} replaces it"
        if reqs.replaces and not a.keep:
            for other in st.units:
                if other != name and match.any(reqs.replaces, other):
                    if not a.allow_displace or other in self.displaced or other in reqs.machine_of:
                        a.displaced = []
                        return f"it cannot displace {other} on {st.short}"
                    a.displaced.append(other)
        return None

    def _check_conflict(self, a: _Attempt) -> str | None:
        if a.conflicts_checked:
            return None
        conflict = self._conflict_on(a.name, a.reqs, a.st, a.displaced)
        return None if conflict is None else f"conflicts with {conflict} on {a.st.short}"

    def _check_resources(self, a: _Attempt) -> str | None:
        reqs, st = a.reqs, a.st
        if reqs.cpu <= 0 and reqs.memory <= 0:
            return None
        freed_cpu = sum(st.units[d].cpu for d in a.displaced)
        freed_memory = sum(st.units[d].memory for d in a.displaced)
        why = self._fits(reqs, st, freed_cpu, freed_memory)
        if why is None:
            return None
        return f"over capacity: {why}" if a.keep else why

    CHECKS = (
        (Category.DRAINING, _check_draining),
        (Category.MACHINE_ID, _check_machine_id),
        (Category.METADATA, _check_metadata),
        (Category.PEER, _check_peers),
        (Category.REPLACE, _check_replace),
        (Category.CONFLICT, _check_conflict),
        (Category.RESOURCES, _check_resources),
    )
    assert [c for c, _ in CHECKS] == list(Category)[:-1]  # the Enum's order is the checks' order
    # pass 1: MachineID and MachineMetadata on every placement first, then the rest, in order
    # (a kept unit on a draining machine stays until _drain moves it: no draining check)
    KEEP_FIRST = CHECKS[1:3]
    KEEP_REST = CHECKS[3:]

    def _first_failure(self, a: _Attempt, checks=CHECKS) -> tuple[Category, str] | None:
        """The first of `checks` (in CHECKS order) that `a` fails, as (category, detail)."""
        for category, check in checks:
            detail = check(self, a)
            if detail is not None:
                return category, detail
        return None

    def _check(self, name: str, reqs: Requirements, st: _MachineState, *, full: bool,
               allow_displace: bool = True,
               conflicts_checked: bool = False) -> tuple[tuple[Category, str] | None, list[str]]:
        """Can `name` be placed on `st` now? (failure (category, detail) or None, units to displace)."""
        a = _Attempt(name, reqs, st, full=full, allow_displace=allow_displace, conflicts_checked=conflicts_checked)
        failure = self._first_failure(a)
        return failure, ([] if failure is not None else a.displaced)

    # -- candidates -----------------------------------------------------------------------

    def _machines_with_id(self, wanted: str) -> list[str]:
        if wanted in self.ms:
            return [wanted]
        if len(wanted) == 8:
            return list(self.short_index.get(wanted, ()))
        return []

    def _narrow(self, constraints: tuple[MetadataConstraint, ...]) -> set[str] | None:
        """Machines that can satisfy the "=" terms (via the metadata index), or None: all."""
        wanted: dict[str, set[str]] = {}
        for c in constraints:
            if c.op in EQ_OPS:
                wanted.setdefault(c.key, set()).add(c.value)
        result: set[str] | None = None
        for key, values in wanted.items():
            found: set[str] = set()
            for value in values:
                found.update(self.meta_index.get((key, value), ()))
            result = found if result is None else result & found
        return result

    def _ordered(self, constraints: tuple[MetadataConstraint, ...]) -> Iterable[str]:
        """Non-draining machines satisfying `constraints`, least loaded first."""
        key = tuple(sorted(set(constraints), key=lambda c: (c.key, c.op, c.value)))
        entry = self.orders.get(key)
        if entry is None:
            narrowed = self._narrow(key)
            pool = sorted(narrowed) if narrowed is not None else list(self.ms)
            members = [
                mid for mid in pool
                if not self.ms[mid].draining and metadata_matches(self.ms[mid].machine.metadata, key)
            ]
            if narrowed is not None and len(members) <= _SMALL_SET:
                entry = tuple(members)
            else:
                entry = LoadOrder()
                for mid in members:
                    st = self.ms[mid]
                    entry.add(mid, st.load)
                    st.orders.append(entry)
            self.orders[key] = entry
        if isinstance(entry, LoadOrder):
            return entry
        ms = self.ms
        return sorted(entry, key=lambda mid: (ms[mid].load, mid))

    def _candidates(self, name: str, reqs: Requirements) -> tuple[Iterable[str] | None, bool, str]:
        """(candidate machine IDs in preference order, whether they need the full check, why none)."""
        if reqs.machine_id:
            found = self._machines_with_id(reqs.machine_id)
            if not found:
                return None, True, f"no machine matches MachineID={reqs.machine_id}"
            if len(found) > 1:
                return None, True, f"MachineID={reqs.machine_id} is ambiguous: it matches {', '.join(found)}"
            return found, True, ""
        hosts: dict[str, str] = {}
        for peer in reqs.machine_of:
            if peer in self.global_names:
                continue
            host = self.where.get(peer)
            if host is None:
                return None, True, f"MachineOf peer {peer} is not scheduled"
            hosts.setdefault(host, peer)
        if len(hosts) > 1:
            placed = ", ".join(f"{peer} on {self.ms[host].short}" for host, peer in hosts.items())
            return None, True, f"MachineOf peers are on different machines ({placed})"
        if hosts:
            return list(hosts), True, ""
        return self._ordered(reqs.metadata), False, ""

    def _search(self, name: str, reqs: Requirements, *, allow_displace: bool = True,
                explain: bool = True) -> tuple[str | None, list[str], str]:
        """The machine for `name` (least loaded feasible), the units it displaces, or why none."""
        key = self._failure_key(name, reqs, allow_displace)
        if key is not None:
            known = self.failures.get(key)
            if known is not None and known[0] == self.detaches:
                return None, [], known[1]
        candidates, full, why = self._candidates(name, reqs)
        if candidates is None:
            return None, [], why
        # Without Replaces (which may displace a conflicting unit) the conflict index is exact.
        indexed = not reqs.replaces
        tables = self._conflicting_machines(name, reqs) if indexed else []
        ms = self.ms
        for mid in candidates:
            if tables and any(mid in table for table in tables):
                continue
            failure, displaced = self._check(name, reqs, ms[mid], full=full, allow_displace=allow_displace,
                                             conflicts_checked=indexed)
            if failure is None:
                return mid, displaced, ""
        why = self._explain(name, reqs, allow_displace) if explain else "no feasible machine"
        if key is not None and explain:
            self.failures[key] = (self.detaches, why)
        return None, [], why

    def _explain(self, name: str, reqs: Requirements, allow_displace: bool) -> str:
        if not self.ms:
            return "no machines in the cluster"
        candidates, full, why = self._candidates(name, reqs)
        if candidates is None:
            return why
        if full:  # a single machine, named by MachineID or by the peers
            (mid,) = candidates
            failure, _ = self._check(name, reqs, self.ms[mid], full=True, allow_displace=allow_displace)
            return f"cannot run on machine {self.ms[mid].short}: {failure[1] if failure else 'unknown'}"
        eligible = [st for st in self.ms.values() if metadata_matches(st.machine.metadata, reqs.metadata)]
        if not eligible:
            return f"no machine satisfies {format_metadata(reqs.metadata)}"
        found: dict[Category, list] = {}
        indexed = not reqs.replaces
        tables = self._conflicting_machines(name, reqs) if indexed else []
        for st in eligible:
            if not st.draining and tables and any(st.id in table for table in tables):
                category = Category.CONFLICT
                if category not in found:
                    other = self._conflict_on(name, reqs, st)
                    found[category] = [0, f"conflicts with {other} on {st.short}"]
                found[category][0] += 1
                continue
            failure, _ = self._check(name, reqs, st, full=False, allow_displace=allow_displace,
                                     conflicts_checked=indexed)
            category, detail = failure or (Category.UNKNOWN, "feasible")
            entry = found.setdefault(category, [0, detail])
            entry[0] += 1
        if len(eligible) == 1:
            return f"cannot run on machine {eligible[0].short}: {next(iter(found.values()))[1]}"
        parts = []
        order = list(Category)
        for category in sorted(found, key=order.index):
            count, example = found[category]
            text = category.value
            parts.append(f"{count} {'machine' if count == 1 else 'machines'} {text} (e.g. {example})")
        return "no machine can run it: " + "; ".join(parts)

    # -- pass 1: existing placements ------------------------------------------------------

    def _basic_reason(self, name: str, placement: Placement) -> str | None:
        unit = self.units.get(name)
        if unit is None:
            return "unit no longer exists"
        info = self.info[name]
        if info.requirements is None:
            return info.error or "invalid unit"
        if info.is_global:
            return "global units are not scheduled"
        if unit.desired_state is DesiredState.INACTIVE:
            return "desired state inactive"
        if is_template_name(name):
            return "a template cannot run"
        st = self.ms.get(placement.machine_id)
        if st is None:
            return f"machine {placement.machine_id} went away"
        failure = self._first_failure(_Attempt(name, info.requirements, st, keep=True), self.KEEP_FIRST)
        return failure[1] if failure else None

    def _kept_reason(self, name: str, reqs: Requirements, st: _MachineState) -> str | None:
        """Checks against the units already kept on `st` (peers come first in the order)."""
        failure = self._first_failure(_Attempt(name, reqs, st, keep=True), self.KEEP_REST)
        return failure[1] if failure else None

    def _pass1(self) -> None:
        survivors = []
        for name in sorted(self.original):
            reason = self._basic_reason(name, self.original[name])
            if reason is None:
                survivors.append(name)
            else:
                self.unplace_log[name] = reason
        for name in self._peer_order(survivors):
            placement = self.original[name]
            st = self.ms[placement.machine_id]
            reqs = self.reqs[name]
            reason = self._kept_reason(name, reqs, st)
            if reason is not None:
                self.unplace_log[name] = reason
                continue
            self._attach(name, reqs, st)
            unit = self.units[name]
            if placement.hash != self.info[name].hash or placement.desired_state != unit.desired_state:
                self._note_placed(name)
        # Replaces: a unit on the same machine as one replacing it moves (pass 2 re-places it).
        match = self.match
        for st in self.ms.values():
            if not st.replacers:
                continue
            for victim in list(st.units):
                if victim not in st.units:
                    continue  # already left with its peer
                for other, patterns in st.replacers.items():
                    if other != victim and match.any(patterns, victim):
                        self._evict(victim, f"replaced by {other}", None)
                        break
        self.evicted = False

    # -- pass 2: units without a machine --------------------------------------------------

    def _pass2(self) -> None:
        todo = []
        for name in sorted(self.units):
            unit = self.units[name]
            if name in self.where or unit.desired_state is DesiredState.INACTIVE:
                continue
            info = self.info[name]
            if info.requirements is None:
                self.unschedulable[name] = info.error or "invalid unit"
            elif info.is_global:
                continue
            elif is_template_name(name):
                self.unschedulable[name] = "a template cannot run; start an instance of it"
            else:
                todo.append(name)
        failed: dict[str, str] = {}
        self._place_all(self._peer_order(todo), failed)
        # Units displaced during the pass may have freed room for units that failed earlier.
        while failed and self.evicted:
            self.evicted = False
            self._place_all(self._peer_order(sorted(failed)), failed)
        self.unschedulable.update(failed)

    def _place_all(self, names: Iterable[str], failed: dict[str, str]) -> None:
        pending: deque[str] = deque()
        source = iter(names)
        while True:
            if pending:
                name = pending.popleft()
            else:
                name = next(source, None)
                if name is None:
                    return
            if name in self.where:
                continue
            reqs = self.reqs[name]
            mid, displaced, why = self._search(name, reqs)
            if mid is None:
                failed[name] = why
                continue
            failed.pop(name, None)
            st = self.ms[mid]
            for victim in displaced:
                if victim in st.units:
                    self.displaced.add(victim)
                    self._evict(victim, f"replaced by {name}", pending)
            self._attach(name, reqs, st)
            self._note_placed(name)

    # -- drain ----------------------------------------------------------------------------

    def _group(self, name: str, st: _MachineState) -> list[str]:
        """`name` and the units tied to it on `st` by MachineOf (either way), peers first."""
        seen = {name}
        todo = [name]
        while todo:
            current = todo.pop()
            linked = list(self.reqs[current].machine_of) + self.dependents.get(current, [])
            for other in linked:
                if other not in seen and other in st.units:
                    seen.add(other)
                    todo.append(other)
        return self._peer_order(sorted(seen))

    def _drain(self) -> None:
        tried: set[str] = set()
        for st in self.ms.values():
            if not st.draining or not st.units:
                continue
            for name in sorted(st.units):
                if name in tried:
                    continue
                group = self._group(name, st)
                tried.update(group)
                if self._move_group(group, st):
                    return

    def _move_group(self, group: list[str], src: _MachineState) -> bool:
        self.journal = []
        for name in reversed(group):
            self._detach(name)
        first = group[0]
        target, _, _ = self._search(first, self.reqs[first], allow_displace=False, explain=False)
        if target is None:
            self._rollback()
            return False
        st = self.ms[target]
        self._attach(first, self.reqs[first], st)
        for name in group[1:]:
            failure, _ = self._check(name, self.reqs[name], st, full=True, allow_displace=False)
            if failure is not None:
                self._rollback()
                return False
            self._attach(name, self.reqs[name], st)
        self.journal = None
        for name in group:
            self._note_unplaced(name, src.id, f"machine {src.short} is draining")
            self._note_placed(name)
        return True

    # -- result ---------------------------------------------------------------------------

    def _decisions(self) -> Decisions:
        unplaces = []
        for name, reason in self.unplace_log.items():
            old = self.original[name]
            if self.where.get(name) != old.machine_id:
                unplaces.append(Unplace(name, old.machine_id, reason))
        places = []
        for name in self.place_log:
            mid = self.where.get(name)
            if mid is None:
                continue
            unit = self.units[name]
            digest = self.info[name].hash
            old = self.original.get(name)
            if old is None:
                reason = f"desired state {unit.desired_state.value} and unit not scheduled"
            elif old.machine_id != mid:
                reason = f"moved from {old.machine_id[:8]}: {self.unplace_log.get(name, 'rescheduled')}"
            elif old.hash != digest:
                reason = "unit file changed"
            elif old.desired_state != unit.desired_state:
                reason = f"desired state changed to {unit.desired_state.value}"
            else:
                continue
            places.append(Place(Placement(name, mid, digest, unit.desired_state), reason))
        return Decisions(
            unplaces=tuple(unplaces),
            places=tuple(places),
            unschedulable={name: self.unschedulable[name] for name in sorted(self.unschedulable)},
        )
