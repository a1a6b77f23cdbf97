"""The change feed's units from the changes its shared watch delivered (fleetd/api/feed.py).

A long poll with `units=true` is answered with the named units as `GET /units?unitName=` shows
them, read after the answer's revision. Reading them from etcd again for each answer (a
transaction for the jobs and states, one for the placements) came on the critical path of a
`fleetctl start`: after the last node's report, 5-10 ms under load (docs/performance.md). The
hub's watch has already delivered every change of those units since a read the feed made
before (the wait's first request reads them, and each answer is one): a unit's records at the
hub's position are that read with the changes after it applied key by key, in order.

A `Seed` is what a read found of one unit, with `low`, the hub's position before the read began
(every change after it is, or will be, in the hub's log), and `high`, a revision at or after
the read's. Folded onto a seed, the logged changes after `low` up to the hub's position P give
the unit at P when `high` <= P: a key changed in (low, P] takes its last change's value, one not
changed keeps the value read, at a revision in [low, P] (a change the read saw already is
applied again: same value). Where that cannot be told, `fold` says so (UNKNOWN) and the caller
reads from etcd as before: a unit that did not exist at the read and was created after (its
states and placements before were not read), a job that points to a body the seed does not
hold (a new body).

Pure functions; the keys are decoded with the registry's codec. The schedule holds at most one
placement of a unit (the engine moves a unit in one transaction); the seed knows the placement
the read returned, and the log every placement written or deleted after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from fleetd.model import Unit
from fleetd.registry import codec
from fleetd.registry.stores import UnitRecord

UNKNOWN = object()  # fold's answer when the unit cannot be told from the seed and the log


@dataclass(frozen=True)
class Seed:
    record: UnitRecord | None  # None: no such unit at the read
    low: int
    high: int


@dataclass(frozen=True)
class KeyKinds:
    """The feed's ranges (the registry's key layout)."""

    jobs: str
    schedule: str
    states: str


def fold(seed: Seed, changes: Iterable[tuple[str, bytes | None]], kinds: KeyKinds):
    """The unit's record after the changes (key, value: None for a deletion) of its keys, in
    revision order, applied to the seed; None when it does not exist; UNKNOWN when that
    cannot be told (a value that is no record: the memory registry's watch carries no states)."""
    try:
        return _fold(seed, changes, kinds)
    except (ValueError, KeyError, TypeError):
        return UNKNOWN


def _fold(seed: Seed, changes: Iterable[tuple[str, bytes | None]], kinds: KeyKinds):
    record = seed.record
    if record is None:
        job = body = None
        placements: dict = {}
        states: dict = {}
    else:
        job, body = (record.unit.hash, record.unit.desired_state), record.unit.file
        placements = {} if record.placement is None else {record.placement.machine_id: record.placement}
        states = {s.machine_id: s for s in record.states}
    name = None if record is None else record.unit.name
    for key, value in changes:
        if key.startswith(kinds.jobs):
            if value is None:
                job = None
                continue
            name, unit_hash, desired = codec.decode_job(value)
            if body is None or unit_hash != body.hash:
                return UNKNOWN
            job = (unit_hash, desired)
        elif key.startswith(kinds.schedule):
            machine_id, _, unit = key[len(kinds.schedule):].partition("/")
            if value is None:
                placements.pop(machine_id, None)
            else:
                placements[machine_id] = codec.decode_placement(unit, machine_id, value)
        elif key.startswith(kinds.states):
            machine_id = key[len(kinds.states):].partition("/")[2]
            if value is None:
                states.pop(machine_id, None)
            else:
                states[machine_id] = codec.decode_state(value)
    if job is None:
        return None
    ordered = tuple(sorted(states.values(), key=lambda s: s.machine_id))
    return UnitRecord(Unit(name, body, job[1]), placement_of(placements, ordered), ordered)


def placement_of(placements: Mapping, states) -> object:
    """The placement `Registry.unit_records` returns: on a machine that reported the unit (the
    last in the states' order), else any (the last in key order), else None."""
    chosen = None
    for state in states:
        chosen = placements.get(state.machine_id, chosen)
    if chosen is None and placements:
        chosen = placements[max(placements)]
    return chosen
