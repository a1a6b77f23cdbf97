"""Values in unit files: specifiers (fleet's unitPrintf), numbers, sizes, CPU quotas.

Shared by [X-Fleet] requirements (fleetd.unit.requirements) and [X-Container]
(fleetd.unit.container); depends on nothing above fleetd.unit.name.
"""

from __future__ import annotations

import re

from fleetd.unit.name import unit_name_info

_SPECIFIER = re.compile(r"%(.)", re.DOTALL)


def expand_specifiers(value: str, name: str) -> str:
    """fleet's unitPrintf for `name`: %n full name, %N name without suffix, %p prefix,
    %i instance, plus %% -> %. Unknown specifiers are kept. No-op for a name without ".".
    """
    info = unit_name_info(name)
    if info is None or "%" not in value:
        return value
    full, base, prefix, instance = info
    table = {"n": full, "N": base, "p": prefix, "i": instance, "%": "%"}
    return _SPECIFIER.sub(lambda m: table.get(m.group(1), m.group(0)), value)


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_SIZE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([BKMGTPE]?)", re.IGNORECASE)
_SIZE_FACTOR = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
                "P": 1 << 50, "E": 1 << 60}
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")


def is_number(value: str) -> bool:
    return _NUMBER.fullmatch(value) is not None


def parse_size(value: str) -> int | None:
    """A systemd size with base-1024 suffixes (512M, 1.5G, 1024); "infinity" -> 0."""
    value = value.strip()
    if value == "infinity":
        return 0
    m = _SIZE.fullmatch(value)
    if m is None:
        return None
    return int(float(m.group(1)) * _SIZE_FACTOR[m.group(2).upper()])


def parse_cpu_quota(value: str) -> float | None:
    """systemd CPUQuota= ("150%") as cores (1.5)."""
    m = _PERCENT.fullmatch(value.strip())
    return float(m.group(1)) / 100.0 if m else None


def parse_cores(value: str) -> float | None:
    """ReserveCPU= as a non-negative number of cores."""
    if not is_number(value):
        return None
    cores = float(value)
    return cores if cores >= 0 else None
