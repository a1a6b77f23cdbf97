"""The cluster model: plain, immutable dataclasses shared by registry, engine, agent and API.

Nothing here talks to etcd or systemd; the registry turns keys into these objects and back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from fleetd.unit.file import UnitFile
from fleetd.unit.requirements import Requirements, requirements_of


class DesiredState(str, enum.Enum):
    """fleet's three target states of a unit (its `desiredState`)."""

    INACTIVE = "inactive"
    LOADED = "loaded"
    LAUNCHED = "launched"

    @classmethod
    def parse(cls, text: str) -> "DesiredState":
        try:
            return cls(text)
        except ValueError:
            allowed = ", ".join(s.value for s in cls)
            raise ValueError(f"invalid desired state {text!r} (expected one of {allowed})") from None


def _frozen_map(mapping: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Unit:
    """A unit as the user declared it: name, body and desired state."""

    name: str
    file: UnitFile
    desired_state: DesiredState = DesiredState.INACTIVE

    @property
    def hash(self) -> str:
        return self.file.hash

    @property
    def requirements(self) -> Requirements:
        return requirements_of(self.file, self.name)

    @property
    def is_global(self) -> bool:
        return self.requirements.is_global


@dataclass(frozen=True)
class Resources:
    """Capacity of a machine, or the reservation of a unit. cpu in cores, memory in bytes."""

    cpu: float = 0.0
    memory: int = 0


@dataclass(frozen=True)
class Machine:
    """A live fleetd, as published under its lease (plus dynamic metadata)."""

    id: str
    public_ip: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    version: str = ""
    capacity: Resources = Resources()
    draining: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", _frozen_map(self.metadata))

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def matches_id(self, wanted: str) -> bool:
        """fleet's MatchID: the full ID or its 8-character short form."""
        return wanted == self.id or (len(wanted) == 8 and wanted == self.short_id)


@dataclass(frozen=True)
class Placement:
    """The engine's decision that a unit runs on a machine (the schedule key's content)."""

    name: str
    machine_id: str
    hash: str
    desired_state: DesiredState


#: systemd active states in which a unit runs or is on its way up: the agent neither starts it
#: (desired launched) nor leaves it running (desired loaded). `deactivating` is not one of them:
#: a unit that is stopping needs a start if it should run.
RUNNING_STATES = frozenset({"active", "activating", "reloading"})
#: systemd active states fleet reports as launched (fleet's job state): the running ones and
#: `deactivating` (a unit that is still stopping is not down yet).
ACTIVE_STATES = RUNNING_STATES | {"deactivating"}


@dataclass(frozen=True)
class UnitState:
    """What an agent observed in its systemd for one unit (fleet's UnitState)."""

    name: str
    machine_id: str
    hash: str
    load_state: str
    active_state: str
    sub_state: str
    # the desired state the agent has finished applying to this unit ("loaded"/"launched"),
    # "" when unknown; lets clients tell "asked to stop" from "stopped" (fleet's job-state)
    applied: str = ""


@dataclass(frozen=True)
class ClusterSnapshot:
    """Everything the engine needs for one decision, read at one etcd revision."""

    revision: int
    units: Mapping[str, Unit]
    machines: Mapping[str, Machine]
    placements: Mapping[str, Placement]  # non-global units only, by unit name

    def __post_init__(self) -> None:
        for attr in ("units", "machines", "placements"):
            object.__setattr__(self, attr, MappingProxyType(dict(getattr(self, attr))))
