"""The cluster model: plain, immutable dataclasses shared by registry, engine, agent and API.

Nothing here talks to etcd or systemd; the registry turns keys into these objects and back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

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


# ---------------------------------------------------------------- images (fleetd/registry/images.py)


@dataclass(frozen=True)
class ImageRecord:
    digest: str
    names: tuple[str, ...] = ()
    size: int = 0
    rootfs: str = ""
    config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "names": list(self.names), "size": self.size,
                "rootfs": self.rootfs, "config": self.config}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ImageRecord":
        return cls(digest=str(data["digest"]), names=tuple(str(n) for n in data.get("names") or ()),
                   size=int(data.get("size") or 0), rootfs=str(data.get("rootfs") or ""),
                   config=dict(data.get("config") or {}))

    def matches(self, ref: str) -> bool:
        """Whether Image=`ref` (a name, a full digest or a sha256: prefix) means this image."""
        if ref in self.names or ref == self.digest:
            return True
        return ref.startswith("sha256:") and len(ref) >= 13 and self.digest.startswith(ref)


@dataclass(frozen=True)
class MachineImages:
    machine_id: str
    url: str = ""  # http://<public IP>:<image port>, "" when the machine serves no images
    facts: dict[str, str] = field(default_factory=dict)
    images: tuple[ImageRecord, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"machineID": self.machine_id, "url": self.url, "facts": self.facts,
                "images": [i.to_json() for i in self.images]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "MachineImages":
        return cls(machine_id=str(data["machineID"]), url=str(data.get("url") or ""),
                   facts=dict(data.get("facts") or {}),
                   images=tuple(ImageRecord.from_json(i) for i in data.get("images") or ()))

    def find(self, ref: str) -> list[ImageRecord]:
        return [i for i in self.images if i.matches(ref)]


# ---------------------------------------------------------------- service endpoints (fleetd/registry/services.py)

PASSING = "passing"
CRITICAL = "critical"


@dataclass(frozen=True)
class Endpoint:
    service: str
    unit: str
    machine_id: str
    host: str
    port: int
    protocol: str = "tcp"
    tags: tuple[str, ...] = ()
    health: str = PASSING
    label: str = ""  # the unit's DNS label: <label>.<service>.<domain>
    weight: int = 10
    priority: int = 10

    @property
    def healthy(self) -> bool:
        return self.health == PASSING

    @property
    def transport(self) -> str:
        return "udp" if self.protocol == "udp" else "tcp"

    def to_json(self) -> dict[str, Any]:
        return {"service": self.service, "unit": self.unit, "machineID": self.machine_id, "host": self.host,
                "port": self.port, "protocol": self.protocol, "tags": list(self.tags), "health": self.health,
                "label": self.label, "weight": self.weight, "priority": self.priority}

    @classmethod
    def from_json(cls, data: Any) -> "Endpoint":
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        port = data["port"]
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"bad port {port!r}")
        tags = data.get("tags") or []
        if not isinstance(tags, list):
            raise ValueError("tags is not a list")
        return cls(service=str(data["service"]), unit=str(data["unit"]), machine_id=str(data["machineID"]),
                   host=str(data["host"]), port=port, protocol=str(data.get("protocol") or "tcp"),
                   tags=tuple(str(t) for t in tags), health=str(data.get("health") or PASSING),
                   label=str(data.get("label") or ""), weight=int(data.get("weight", 10)),
                   priority=int(data.get("priority", 10)))

    @property
    def key_parts(self) -> tuple[str, str, str]:
        return self.service, self.machine_id, self.unit
