"""Moved to :mod:`fleetd.unit.container` (a unit-file concern, below the registry and the
engine); this module keeps the old import path working."""

from fleetd.unit.container import (
    DEFAULT_RUNTIME, RUNTIMES, ContainerSpec, container_spec, is_container_unit, validate_container,
)

__all__ = ["DEFAULT_RUNTIME", "RUNTIMES", "ContainerSpec", "container_spec", "is_container_unit", "validate_container"]
