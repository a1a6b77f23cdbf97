"""Unit files, unit names and [X-Fleet] requirements."""

from fleetd.unit.file import LINE_MAX, UnitFile, UnitOption

__all__ = ["LINE_MAX", "UnitFile", "UnitOption"]
