"""Unit names: fleet's validation (api/units.go ValidateName), UnitNameInfo, fleetctl mangling.

Rules (systemd's unit_name_is_valid as fleet enforces it):

* at most 256 characters, from ``[a-zA-Z0-9:_.@\\-]`` plus backslash (systemd's escape
  character, e.g. ``dev-disk-by\\x2duuid.device``; fleet's validChars includes it too);
* must not start with ``@``, must contain a ``.``, must not end with one, and must have a
  non-empty name before the suffix;
* the suffix (after the last ``.``) is one of :data:`UNIT_TYPES`;
* a name with ``@`` is a template (``foo@.service``) or an instance (``foo@bar.service``);
  only :data:`TEMPLATE_TYPES` may be templated. The instance is everything between the
  first ``@`` and the last ``.``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from fleetd.errors import InvalidUnitName

UNIT_NAME_MAX = 256

#: Valid unit types (api/units.go validUnitTypes).
UNIT_TYPES = frozenset({
    "automount", "busname", "device", "mount", "path", "scope", "service", "slice",
    "snapshot", "socket", "swap", "target", "timer",
})

#: Unit types that may be templates or instances.
TEMPLATE_TYPES = frozenset({"path", "service", "socket", "target", "timer"})

#: Suffixes fleetctl leaves alone when mangling (unit/unit.go RecognizedUnitType).
RECOGNIZED_TYPES = ("service", "socket", "timer", "path", "device", "mount", "automount")

_VALID_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.@-\\"
)


@dataclass(frozen=True)
class UnitName:
    """A validated unit name split like fleet's UnitNameInfo.

    ``instance`` is None for a plain unit, "" for a template and the instance string for
    an instance; ``prefix`` is the part before the first ``@`` (or the whole name without
    its suffix for a plain unit); ``suffix`` has no leading dot.
    """

    full: str
    prefix: str
    instance: str | None
    suffix: str

    @property
    def is_template(self) -> bool:
        return self.instance == ""

    @property
    def is_instance(self) -> bool:
        return bool(self.instance)

    @property
    def name(self) -> str:
        """The full name without its suffix (systemd's %N), e.g. "foo@bar"."""
        return self.full[: -(len(self.suffix) + 1)]

    @property
    def template(self) -> str | None:
        """"foo@.service" for a template or an instance, None for a plain unit."""
        if self.instance is None:
            return None
        return f"{self.prefix}@.{self.suffix}"

    def instantiate(self, instance: str) -> "UnitName":
        """The instance `instance` of this template (or of this instance's template)."""
        if self.instance is None:
            raise InvalidUnitName(f"unit {self.full} is not a template")
        return parse_unit_name(f"{self.prefix}@{instance}.{self.suffix}")

    def __str__(self) -> str:
        return self.full


def _invalid(name: str, reason: str) -> InvalidUnitName:
    shown = name if len(name) <= 300 else name[:300] + "..."
    return InvalidUnitName(f"invalid unit name {json.dumps(shown)}: {reason}")


def parse_unit_name(name: str) -> UnitName:
    """Validate `name` as fleet does and split it; raise InvalidUnitName otherwise."""
    if not isinstance(name, str):
        raise InvalidUnitName(f"invalid unit name {name!r}: not a string")
    if not name:
        raise _invalid(name, "name is empty")
    if len(name) > UNIT_NAME_MAX:
        raise _invalid(name, f"longer than {UNIT_NAME_MAX} characters")
    for ch in name:
        if ch not in _VALID_CHARS:
            raise _invalid(name, f"character {ch!r} not allowed")
    if name.startswith("@"):
        raise _invalid(name, 'must not start with "@"')
    dot = name.rfind(".")
    if dot == -1:
        raise _invalid(name, 'must contain a "." followed by a unit type')
    if dot == len(name) - 1:
        raise _invalid(name, 'must not end with "."')
    suffix = name[dot + 1:]
    if suffix not in UNIT_TYPES:
        raise _invalid(name, f'unknown unit type "{suffix}"')
    base = name[:dot]
    if not base:
        raise _invalid(name, 'empty name before ".' + suffix + '"')
    at = base.find("@")
    if at == -1:
        return UnitName(full=name, prefix=base, instance=None, suffix=suffix)
    if suffix not in TEMPLATE_TYPES:
        raise _invalid(name, f'a "{suffix}" unit cannot be a template or an instance')
    return UnitName(full=name, prefix=base[:at], instance=base[at + 1:], suffix=suffix)


def is_valid_unit_name(name: str) -> bool:
    try:
        parse_unit_name(name)
    except InvalidUnitName:
        return False
    return True


def go_path_base(path: str) -> str:
    """Go's path.Base: the last slash-separated element ("." for "", "/" for all slashes)."""
    if path == "":
        return "."
    path = path.rstrip("/")
    if path == "":
        return "/"
    return path[path.rfind("/") + 1:]


def mangle_unit_name(arg: str) -> str:
    """fleetctl's unitNameMangle: path.Base(arg), plus ".service" unless the name already
    ends in a recognized unit type (service socket timer path device mount automount).

    The result is not validated: pass it to parse_unit_name() (see parse_unit_arg()).
    """
    name = go_path_base(arg)
    if any(name.endswith("." + t) for t in RECOGNIZED_TYPES):
        return name
    return name + ".service"


def parse_unit_arg(arg: str) -> UnitName:
    """A fleetctl command-line unit argument (a name or a file path), mangled and validated."""
    return parse_unit_name(mangle_unit_name(arg))


def is_template_name(name: str) -> bool:
    """`foo@.service` (a template, which cannot run) as opposed to `foo@1.service` or
    `foo.service`; the one template rule, without validation (fleet's UnitNameInfo.IsTemplate:
    an "@" right before the last ".")."""
    at = name.find("@")
    return at >= 0 and name.rfind(".") == at + 1


def unit_name_info(name: str) -> tuple[str, str, str, str] | None:
    """fleet's lenient NewUnitNameInfo without validation: (full, name, prefix, instance),
    or None when `name` has no "." (then fleet expands no specifiers)."""
    dot = name.rfind(".")
    if dot == -1:
        return None
    base = name[:dot]
    at = base.find("@")
    if at == -1:
        return name, base, base, ""
    return name, base, base[:at], base[at + 1:]
