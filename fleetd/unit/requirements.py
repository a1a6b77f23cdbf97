"""[X-Fleet] scheduling requirements of a unit, with specifiers expanded.

INTERFACE FIXED BY THE LEAD (the dataclasses below are used by engine/agent/model);
the parsing functions are to be implemented.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetd.unit.file import UnitFile


@dataclass(frozen=True)
class MetadataConstraint:
    """One `MachineMetadata=` term. op is one of "=", "!=", "<", "<=", ">", ">=".

    fleet semantics: "=" terms of the same key are ORed, keys are ANDed. Our extension: every
    other operator is ANDed, and an ordering operator compares numbers (a non-numeric machine
    value never satisfies it).
    """

    key: str
    op: str
    value: str


@dataclass(frozen=True)
class Requirements:
    machine_id: str | None = None                 # MachineID (first value wins)
    machine_of: tuple[str, ...] = ()              # MachineOf peers (unit names)
    metadata: tuple[MetadataConstraint, ...] = ()
    conflicts: tuple[str, ...] = ()               # globs
    replaces: tuple[str, ...] = ()                # globs
    is_global: bool = False
    cpu: float = 0.0                              # reserved cores (CPUQuota=200% -> 2.0, or X-Fleet)
    memory: int = 0                               # reserved bytes (MemoryMax=, MemoryLimit=, or X-Fleet)
    unknown_options: tuple[str, ...] = ()         # unknown [X-Fleet] keys: client-side warnings only


def requirements_of(unit: UnitFile, name: str) -> Requirements:
    raise NotImplementedError
