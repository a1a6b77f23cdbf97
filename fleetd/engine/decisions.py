"""What one reconcile pass decided: schedule writes, schedule deletes, units left waiting."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from fleetd.model import Placement


@dataclass(frozen=True)
class Place:
    """Write this placement: a new one, a move, or new hash/desired state on the same machine."""

    placement: Placement
    reason: str = ""


@dataclass(frozen=True)
class Unplace:
    """Delete the placement of `name` on `machine_id` (compare-and-delete on that machine)."""

    name: str
    machine_id: str
    reason: str


@dataclass(frozen=True)
class Decisions:
    """The result of reconcile(): apply `unplaces` first, then `places`, each in order.

    A unit that moves appears in both (Unplace from the old machine, Place on the new one).
    `unschedulable` maps every non-global, non-inactive unit left without a machine to a
    human-readable reason, in name order.
    """

    unplaces: tuple[Unplace, ...] = ()
    places: tuple[Place, ...] = ()
    unschedulable: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "unplaces", tuple(self.unplaces))
        object.__setattr__(self, "places", tuple(self.places))
        object.__setattr__(self, "unschedulable", MappingProxyType(dict(self.unschedulable)))

    @property
    def empty(self) -> bool:
        """True when nothing has to be written (unschedulable units do not count)."""
        return not self.unplaces and not self.places

    def unschedulable_lines(self) -> list[str]:
        """`name: reason` lines for logs and status output."""
        return [f"{name}: {reason}" for name, reason in self.unschedulable.items()]

    def apply(self, placements: Mapping[str, Placement]) -> dict[str, Placement]:
        """The schedule after these decisions are written over `placements`."""
        result = dict(placements)
        for unplace in self.unplaces:
            current = result.get(unplace.name)
            if current is not None and current.machine_id == unplace.machine_id:
                del result[unplace.name]
        for place in self.places:
            result[place.placement.name] = place.placement
        return result
