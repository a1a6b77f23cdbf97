"""Unit files, unit names and [X-Fleet] requirements."""

from fleetd.unit.file import LINE_MAX, UnitFile, UnitOption
from fleetd.unit.name import (
    TEMPLATE_TYPES,
    UNIT_TYPES,
    UnitName,
    is_valid_unit_name,
    mangle_unit_name,
    parse_unit_arg,
    parse_unit_name,
)
from fleetd.unit.requirements import (
    KNOWN_OPTIONS,
    MetadataConstraint,
    Requirements,
    expand_specifiers,
    glob_match,
    is_truthy,
    is_valid_glob,
    parse_metadata_term,
    parse_size,
    requirements_of,
    split_multivalue,
    validate_unit,
)

__all__ = [
    "KNOWN_OPTIONS", "LINE_MAX", "TEMPLATE_TYPES", "UNIT_TYPES",
    "MetadataConstraint", "Requirements", "UnitFile", "UnitName", "UnitOption",
    "expand_specifiers", "glob_match", "is_truthy", "is_valid_glob", "is_valid_unit_name",
    "mangle_unit_name", "parse_metadata_term", "parse_size", "parse_unit_arg",
    "parse_unit_name", "requirements_of", "split_multivalue", "validate_unit",
]
