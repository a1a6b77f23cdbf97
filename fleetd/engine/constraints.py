"""Moved to :mod:`fleetd.constraints` (shared by the engine and the agent, so below both);
this module keeps the old import path working."""

from fleetd.constraints import RequirementsCache, format_metadata, global_units_for, metadata_matches

__all__ = ["RequirementsCache", "format_metadata", "global_units_for", "metadata_matches"]
