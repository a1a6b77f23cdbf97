"""The registry's stores as Protocols: what each part of the cluster's state offers.

Two implementations: etcd (fleetd/registry/units.py, machines.py, schedule.py, leadership.py,
states.py over one RegistryCore) and memory (fleetd/registry/memory.py, for fast tests; the
same behavioural tests run against both, tests/test_registry_stores.py). `Registry` composes
the etcd stores and keeps the flat method names callers use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence, runtime_checkable

from fleetd.errors import RegistryError
from fleetd.model import ClusterSnapshot, DesiredState, Machine, Placement, Unit, UnitState
from fleetd.unit.file import UnitFile


class NotLeader(RegistryError):
    """A schedule write was fenced off because this engine no longer holds the leader lease."""


@dataclass(frozen=True)
class UnitRecord:
    """A unit, its placement (None: not placed, or see `Registry.unit_records`) and its states."""

    unit: Unit
    placement: Placement | None
    states: tuple[UnitState, ...]


@dataclass(frozen=True)
class MachineView:
    """One machine's share of the registry, read at one revision (see Registry.machine_view)."""

    placements: dict[str, Placement]
    globals: dict[str, tuple[str, DesiredState]]
    machine: Machine | None  # None when its record is gone (lease expired)
    revision: int


@runtime_checkable
class UnitStore(Protocol):
    """Units (job records) and their content-addressed bodies."""

    async def bodies(self, hashes: Iterable[str]) -> dict[str, UnitFile]: ...
    async def get_unit(self, name: str) -> Unit | None: ...
    async def list_units(self) -> list[Unit]: ...
    async def create_unit(self, unit: Unit) -> bool: ...
    async def create_units(self, units: Sequence[Unit]) -> list[str]: ...
    async def replace_unit(self, unit: Unit, *, expected_hash: str | None = None) -> None: ...
    async def set_desired_state(self, names: Sequence[str], state: DesiredState) -> None: ...
    async def destroy_units(self, names: Sequence[str]) -> list[str]: ...


@runtime_checkable
class MachineStore(Protocol):
    """Machine records (under a lease), dynamic metadata, draining, and the leases themselves."""

    async def list_machines(self) -> list[Machine]: ...
    async def get_machine(self, machine_id: str) -> Machine | None: ...
    async def set_machine_metadata(self, machine_id: str, key: str, value: str | None) -> None: ...
    async def set_draining(self, machine_id: str, draining: bool) -> None: ...
    async def register_machine(self, machine: Machine, lease_id: int, *, adopt_lease: int | None = None) -> int: ...
    async def update_machine(self, machine: Machine, lease_id: int) -> None: ...
    async def grant_lease(self, ttl: float) -> int: ...
    async def keepalive(self, lease_id: int, timeout: float | None = None) -> int: ...
    async def revoke_lease(self, lease_id: int) -> None: ...


@runtime_checkable
class ScheduleStore(Protocol):
    """The engine's decisions: placements per machine and the global-unit mirror."""

    async def placements(self) -> dict[str, Placement]: ...
    async def placements_on(self, candidates: dict[str, Sequence[str]]) -> dict[str, Placement]: ...
    async def global_targets(self) -> dict[str, tuple[str, DesiredState]]: ...
    async def apply_schedule(self, *, fence_machine_id: str, place: Sequence[Placement] = (),
                             unplace: Sequence[tuple[str, str]] = (),
                             publish_globals: Sequence[tuple[str, str, DesiredState]] = (),
                             retract_globals: Sequence[str] = ()) -> int: ...


@runtime_checkable
class LeadershipStore(Protocol):
    """The engine leader key, held under the leader's machine lease."""

    async def campaign(self, machine_id: str, lease_id: int) -> bool: ...
    async def leader(self) -> tuple[str | None, int]: ...
    async def leader_lease(self) -> tuple[str | None, int]: ...
    async def resign(self, machine_id: str) -> None: ...


@runtime_checkable
class StateStore(Protocol):
    """Unit states the agents observed in their systemd, under each agent's lease."""

    async def publish_states(self, states: Sequence[UnitState], lease_id: int) -> None: ...
    async def delete_states(self, names: Sequence[str], machine_id: str) -> None: ...
    async def unit_states(self, name: str | None = None, machine_id: str | None = None) -> list[UnitState]: ...


@runtime_checkable
class ClusterViews(Protocol):
    """Reads across stores at one revision."""

    async def snapshot(self) -> ClusterSnapshot: ...
    async def machine_view(self, machine_id: str) -> MachineView: ...
    async def unit_records(self, names: Sequence[str], *, find_unreported: bool = True) -> dict[str, UnitRecord]: ...
