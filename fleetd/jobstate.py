"""fleet's current ("job") state of a unit, derived from the registry's records.

Shared by the HTTP API (fleetd.api) and fleetctl's etcd driver so that both report the same
`currentState` for a unit (fleet's registry/job_state.go determineJobState).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from fleetd.model import ACTIVE_STATES, DesiredState, Placement, Unit, UnitState

__all__ = ["ACTIVE_STATES", "current_state_of", "current_states"]


def current_state_of(unit: Unit, placement: Placement | None, states: Sequence[UnitState]) -> tuple[str, str]:
    """(current state, target machine) of a unit: "" for both if it is global."""
    if unit.is_global:
        return "", ""
    if placement is None:
        return DesiredState.INACTIVE.value, ""
    reported = next((s for s in states if s.machine_id == placement.machine_id and s.hash == unit.hash), None)
    if reported is None:
        return DesiredState.INACTIVE.value, placement.machine_id
    active = reported.active_state in ACTIVE_STATES
    if placement.desired_state is DesiredState.LAUNCHED:
        current = DesiredState.LAUNCHED if active else DesiredState.LOADED
    elif reported.applied:
        # desired loaded: only once the agent has finished stopping it (a unit that systemd
        # runs for another reason, e.g. an [Install] WantedBy= sidekick, is still "loaded")
        current = DesiredState.LOADED if reported.applied == DesiredState.LOADED.value else DesiredState.LAUNCHED
    else:  # a record without `applied` (older agent): judge by systemd alone
        current = DesiredState.LAUNCHED if active else DesiredState.LOADED
    return current.value, placement.machine_id


def current_states(units: Iterable[Unit], placements: Mapping[str, Placement],
                   states: Iterable[UnitState]) -> list[tuple[Unit, str, str]]:
    """(unit, current state, target machine) of each unit, in the order given, from the whole
    cluster's records (the API's /units, fleetctl list-units)."""
    by_name: dict[str, list[UnitState]] = {}
    for s in states:
        by_name.setdefault(s.name, []).append(s)
    return [(unit, *current_state_of(unit, placements.get(unit.name), by_name.get(unit.name, [])))
            for unit in units]
