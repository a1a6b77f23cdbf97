"""Pure constraint checks shared by the engine (scheduler) and the agent (global units): a
layer below both, so that neither imports the other.

* MachineMetadata: "=" terms of one key are ORed, keys are ANDed (fleet's HasMetadata); every
  other operator is ANDed. "!=" holds when the machine lacks the key or has another value;
  "<", "<=", ">", ">=" compare numbers and fail when either side is not a number or the
  machine lacks the key.
* Conflicts: Go path.Match globs, symmetric (either unit's globs match the other's name).
* Replaces: X replaces Y when one of X's globs matches Y; a pair replacing each other is
  "circular" and the rule is ignored for it (the two then simply cannot share a machine).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from fleetd.errors import FleetError
from fleetd.model import DesiredState, Machine, Placement, Unit
from fleetd.unit.file import UnitFile
from fleetd.unit.name import is_template_name
from fleetd.unit.requirements import MetadataConstraint, Requirements, glob_match

_ORDER_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
EQ_OPS = frozenset({"=", "=="})  # MachineMetadata terms ORed per key
_GLOB_META = frozenset("*?[\\")


def _number(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return None if math.isnan(value) else value


def metadata_matches(metadata: Mapping[str, str], constraints: Sequence[MetadataConstraint]) -> bool:
    """Whether a machine with `metadata` satisfies every MachineMetadata term."""
    if not constraints:
        return True
    wanted: dict[str, list[str]] = {}
    for c in constraints:
        if c.op in EQ_OPS:
            wanted.setdefault(c.key, []).append(c.value)
            continue
        have = metadata.get(c.key)
        if c.op == "!=":
            if have == c.value:
                return False
            continue
        compare = _ORDER_OPS.get(c.op)
        if compare is None or have is None:
            return False
        left, right = _number(have), _number(c.value)
        if left is None or right is None or not compare(left, right):
            return False
    return all(metadata.get(key) in values for key, values in wanted.items())


def format_metadata(constraints: Iterable[MetadataConstraint]) -> str:
    """`MachineMetadata=region=us region=eu cores>=4` (for messages)."""
    return "MachineMetadata=" + " ".join(f"{c.key}{c.op}{c.value}" for c in constraints)




class GlobMatcher:
    """Go path.Match with a per-instance cache; literal patterns compare by equality."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], bool] = {}

    @staticmethod
    def is_literal(pattern: str) -> bool:
        return not any(ch in _GLOB_META for ch in pattern)

    def __call__(self, pattern: str, name: str) -> bool:
        key = (pattern, name)
        hit = self._cache.get(key)
        if hit is None:
            if self.is_literal(pattern):
                hit = pattern == name
            else:
                try:
                    hit = bool(glob_match(pattern, name))
                except (ValueError, FleetError):  # a malformed pattern matches nothing
                    hit = False
            self._cache[key] = hit
        return hit

    def any(self, patterns: Iterable[str], name: str) -> bool:
        return any(self(p, name) for p in patterns)

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        self._cache.clear()


def conflicts_between(a: str, ra: Requirements, b: str, rb: Requirements, match: GlobMatcher) -> bool:
    """fleet's HasConflict for one pair: symmetric glob match; a unit never conflicts with itself."""
    if a == b:
        return False
    return match.any(ra.conflicts, b) or match.any(rb.conflicts, a)


# --- requirements and hashes, cached per unit body -------------------------------------------


@dataclass(frozen=True)
class UnitInfo:
    """What the engine needs of one unit body: its requirements (or why it has none) and hash."""

    requirements: Requirements | None
    hash: str
    error: str | None = None

    @property
    def is_global(self) -> bool:
        return self.requirements is not None and self.requirements.is_global


class RequirementsCache:
    """Requirements and hash per unit, recomputed only when a unit's body changes.

    Keep one instance across reconcile calls (engine) or agent passes; `resolve` defaults to
    `unit.requirements` and exists so that callers (and tests) can supply their own.
    """

    #: The glob cache is dropped when it grows past this many (pattern, name) pairs.
    MAX_GLOB_ENTRIES = 1_000_000

    def __init__(self, resolve: Callable[[Unit], Requirements] | None = None) -> None:
        self._resolve = resolve or (lambda unit: unit.requirements)
        self._entries: dict[str, tuple[UnitFile, UnitInfo]] = {}
        self.globs = GlobMatcher()  # glob results, kept across passes too

    def info(self, unit: Unit) -> UnitInfo:
        entry = self._entries.get(unit.name)
        if entry is not None and (entry[0] is unit.file or entry[0] == unit.file):
            return entry[1]
        try:
            info = UnitInfo(self._resolve(unit), unit.hash)
        except FleetError as exc:
            info = UnitInfo(None, unit.hash, f"invalid unit: {exc}")
        self._entries[unit.name] = (unit.file, info)
        return info

    def requirements(self, unit: Unit) -> Requirements | None:
        return self.info(unit).requirements

    def prune(self, live_names: Iterable[str]) -> None:
        """Forget units that no longer exist."""
        live = set(live_names)
        for name in [n for n in self._entries if n not in live]:
            del self._entries[name]
        if len(self.globs) > self.MAX_GLOB_ENTRIES:
            self.globs.clear()

    def __len__(self) -> int:
        return len(self._entries)


# --- global units ------------------------------------------------------------------------------


def active_globals(units: Iterable[Unit], cache: RequirementsCache) -> list[tuple[str, Requirements]]:
    """Global units whose desired state is not inactive, in name order."""
    found = []
    for unit in units:
        if unit.desired_state is DesiredState.INACTIVE:
            continue
        info = cache.info(unit)
        if info.is_global and not is_template_name(unit.name):
            found.append((unit.name, info.requirements))
    found.sort(key=lambda item: item[0])
    return found


def globals_matching(machine: Machine, globals_sorted: Sequence[tuple[str, Requirements]],
                     match: GlobMatcher) -> list[tuple[str, Requirements]]:
    """The global units that apply to `machine`, as the engine counts them.

    A global applies when its MachineMetadata (and MachineID, although fleet forbids it on a
    global) matches and it does not conflict with a global that sorts before it: of two
    conflicting globals only the first runs (fleet's TestScheduleGlobalConflicts).
    """
    accepted: list[tuple[str, Requirements]] = []
    for name, reqs in globals_sorted:
        if reqs.machine_id and not machine.matches_id(reqs.machine_id):
            continue
        if not metadata_matches(machine.metadata, reqs.metadata):
            continue
        if any(conflicts_between(name, reqs, other, other_reqs, match) for other, other_reqs in accepted):
            continue
        accepted.append((name, reqs))
    return accepted


def global_units_for(machine: Machine, units: Iterable[Unit],
                     placements: Mapping[str, Placement] | Iterable[Placement] = (), *,
                     cache: RequirementsCache | None = None) -> set[str]:
    """Which global units the agent of `machine` should run (fleet's desiredAgentState).

    A global runs when it is not inactive, its metadata matches the machine (dynamic metadata
    included, as merged in `machine.metadata`), it does not conflict with an earlier global
    running there, and it does not conflict with a non-global unit scheduled on this machine.
    The engine moves a scheduled unit away from a machine where a global conflicts with it;
    until it has done so the global waits, so the two never run side by side.
    """
    cache = cache or RequirementsCache()
    units = list(units)
    by_name = {unit.name: unit for unit in units}
    match = GlobMatcher()
    values = placements.values() if isinstance(placements, Mapping) else placements
    local: list[tuple[str, Requirements]] = []
    for placement in values:
        unit = by_name.get(placement.name)
        if placement.machine_id != machine.id or unit is None:
            continue
        if unit.desired_state is DesiredState.INACTIVE:
            continue
        info = cache.info(unit)
        if info.requirements is not None and not info.is_global:
            local.append((unit.name, info.requirements))
    result = set()
    for name, reqs in globals_matching(machine, active_globals(units, cache), match):
        if not any(conflicts_between(name, reqs, other, other_reqs, match) for other, other_reqs in local):
            result.add(name)
    return result
