"""[X-Fleet] scheduling requirements of a unit, with specifiers expanded.

INTERFACE FIXED BY THE LEAD (the dataclasses below are used by engine/agent/model).

Semantics follow fleet's job/job.go:

* Every [X-Fleet] value is split on whitespace, double quotes grouping (and being dropped):
  ``MachineMetadata="region=us east" disk=ssd`` gives ``region=us east`` and ``disk=ssd``.
  Repeated lines accumulate.
* ``%n %N %p %i`` (and ``%%``) are expanded in [X-Fleet] values only, from the unit name
  (fleet's unitPrintf); other specifiers are left for systemd.
* MachineID: the first value of MachineID, else X-ConditionMachineID, else
  X-ConditionMachineBootID. MachineOf = X-ConditionMachineOf + MachineOf;
  Conflicts = X-Conflicts + Conflicts; MachineMetadata = X-ConditionMachineMetadata +
  MachineMetadata; Global: the last value, truthy if true/yes/1/on/t (any case).
  As in fleet, ``MachineID=%i`` in a non-instance unit gives machine_id "" (matches no machine).
* Resources (our extension): cpu from [Service] CPUQuota= (150% -> 1.5), memory from
  [Service] MemoryMax= (else MemoryLimit=; K/M/G/T/P/E base 1024, "infinity" -> 0), both
  overridden by [X-Fleet] ReserveCPU= (cores) / ReserveMemory= (bytes, suffixes allowed).
  A container unit without those [Service] settings reserves its [X-Container] CPUs= and
  Memory= (which become its CPUQuota=/MemoryMax= on the node).
  requirements_of() ignores values it cannot read; validate_unit() rejects them.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from fleetd.errors import InvalidUnitOptions
from fleetd.unit.container import validate_container
from fleetd.unit.file import UnitFile, go_trim_space
from fleetd.unit.values import expand_specifiers, is_number, parse_cores, parse_cpu_quota, parse_size
from fleetd.values import is_truthy


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


# --- option names -----------------------------------------------------------------------

X_FLEET = "X-Fleet"

MACHINE_ID_KEYS = ("MachineID", "X-ConditionMachineID", "X-ConditionMachineBootID")
MACHINE_OF_KEYS = ("X-ConditionMachineOf", "MachineOf")
CONFLICTS_KEYS = ("X-Conflicts", "Conflicts")
METADATA_KEYS = ("X-ConditionMachineMetadata", "MachineMetadata")
GLOBAL_KEY = "Global"
REPLACES_KEY = "Replaces"
RESERVE_CPU_KEY = "ReserveCPU"
RESERVE_MEMORY_KEY = "ReserveMemory"

#: Every [X-Fleet] key we understand (fleet's validRequirements plus Reserve*).
KNOWN_OPTIONS = frozenset(
    MACHINE_ID_KEYS + MACHINE_OF_KEYS + CONFLICTS_KEYS + METADATA_KEYS
    + (GLOBAL_KEY, REPLACES_KEY, RESERVE_CPU_KEY, RESERVE_MEMORY_KEY)
)

ORDERING_OPS = frozenset({"<", "<=", ">", ">="})

# --- value helpers -------------------------------------------------------------------------

def split_multivalue(line: str) -> list[str]:
    """Split an [X-Fleet] value on whitespace; double quotes group and are removed.

    An unterminated quote runs to the end of the line. Empty words are dropped.
    """
    words: list[str] = []
    cur: list[str] = []
    quoted = False
    have = False  # a word is in progress (possibly an empty quoted one)
    for ch in line:
        if ch == '"':
            quoted = not quoted
            have = True
        elif not quoted and ch.isspace():
            if have:
                words.append("".join(cur))
                cur, have = [], False
        else:
            cur.append(ch)
            have = True
    if have:
        words.append("".join(cur))
    return [w for w in words if w]


_METADATA_TERM = re.compile(r"([^=!<>]+)(!=|<=|>=|=|<|>)([^=]+)", re.DOTALL)


def parse_metadata_term(term: str) -> MetadataConstraint | None:
    """One MachineMetadata word: "k=v", "k!=v", "k<v", "k<=v", "k>v", "k>=v".

    As in fleet, a term with an empty side or that is not of that form (e.g. "a=b=c",
    "=v", "k=") is ignored: None.
    """
    m = _METADATA_TERM.fullmatch(term)
    if m is None:
        return None
    return MetadataConstraint(key=m.group(1), op=m.group(2), value=m.group(3))


# --- the requirements ----------------------------------------------------------------------

def _dedup(items) -> tuple:
    return tuple(dict.fromkeys(items))


@functools.lru_cache(maxsize=4096)
def _xfleet_values(unit: UnitFile, name: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """[X-Fleet] options as (key, expanded words) in file order."""
    out = []
    for opt in unit.options:
        if opt.section != X_FLEET:
            continue
        words = tuple(expand_specifiers(w, name) for w in split_multivalue(opt.value))
        out.append((opt.name, words))
    return tuple(out)


def _words(values, keys: tuple[str, ...] | str) -> list[str]:
    if isinstance(keys, str):
        keys = (keys,)
    out: list[str] = []
    for key in keys:  # fleet concatenates per key, legacy key first
        for k, words in values:
            if k == key:
                out.extend(words)
    return out


def _last_value(unit: UnitFile, section: str, key: str) -> str | None:
    """systemd semantics: the last assignment wins, an empty assignment resets.

    [X-Container] Memory=/CPUs= are read the same way (a container unit's limits are also its
    reservation)."""
    found = unit.values(section, key)
    return (go_trim_space(found[-1]) or None) if found else None


#: Where a unit's CPU and memory come from when no Reserve* option overrides them, in order of
#: precedence: (section, option[, parser]). The first one set is used.
_CPU_SOURCES = (("Service", "CPUQuota", parse_cpu_quota), ("X-Container", "CPUs", parse_cores))
_MEMORY_SOURCES = (("Service", "MemoryMax"), ("Service", "MemoryLimit"), ("X-Container", "Memory"))
#: Options other than [X-Fleet] ones that requirements_of() reads, option -> section: a unit with
#: none of these and no [X-Fleet] option requires nothing (`NO_REQUIREMENTS`).
_RESOURCE_OPTIONS = {source[1]: source[0] for source in _CPU_SOURCES + _MEMORY_SOURCES}
NO_REQUIREMENTS = Requirements()


def requirements_of(unit: UnitFile, name: str) -> Requirements:
    """The scheduling requirements of `unit` submitted as `name` (never raises).

    A unit without [X-Fleet] options and resource settings (most units) requires nothing: found
    in one look at its options, without the cache below (whose key hashes every option)."""
    resources = _RESOURCE_OPTIONS
    for opt in unit.options:
        if opt.section == X_FLEET or resources.get(opt.name) == opt.section:
            return _requirements_of(unit, name)
    return NO_REQUIREMENTS


@functools.lru_cache(maxsize=4096)
def _requirements_of(unit: UnitFile, name: str) -> Requirements:
    values = _xfleet_values(unit, name)

    machine_id = None
    for key in MACHINE_ID_KEYS:
        ids = _words(values, key)
        if ids:
            machine_id = ids[0]
            break

    metadata = []
    for term in _words(values, METADATA_KEYS):
        constraint = parse_metadata_term(term)
        if constraint is not None:
            metadata.append(constraint)

    global_values = _words(values, GLOBAL_KEY)
    is_global = bool(global_values) and is_truthy(global_values[-1])

    cpu = 0.0
    for section, key, parse in _CPU_SOURCES:
        if (value := _last_value(unit, section, key)) is not None:
            cpu = parse(value) or 0.0
            break
    reserve_cpu = _words(values, RESERVE_CPU_KEY)
    if reserve_cpu:
        parsed = parse_cores(reserve_cpu[-1])
        if parsed is not None:
            cpu = parsed

    memory = 0
    for section, key in _MEMORY_SOURCES:
        if (value := _last_value(unit, section, key)) is not None:
            memory = parse_size(value) or 0
            break
    reserve_mem = _words(values, RESERVE_MEMORY_KEY)
    if reserve_mem:
        parsed_mem = parse_size(reserve_mem[-1])
        if parsed_mem is not None:
            memory = parsed_mem

    return Requirements(
        machine_id=machine_id,
        machine_of=_dedup(_words(values, MACHINE_OF_KEYS)),
        metadata=_dedup(metadata),
        conflicts=_dedup(_words(values, CONFLICTS_KEYS)),
        replaces=_dedup(_words(values, REPLACES_KEY)),
        is_global=is_global,
        cpu=cpu,
        memory=memory,
        unknown_options=_dedup(k for k, _ in values if k not in KNOWN_OPTIONS),
    )


def validate_unit(unit: UnitFile, name: str) -> Requirements:
    """fleet's ValidateOptions plus checks of our extensions; return the requirements.

    Raises InvalidUnitOptions("unit <name>: <problem>") for the first problem found.
    Unknown [X-Fleet] keys are not errors (see Requirements.unknown_options).
    """
    req = requirements_of(unit, name)
    values = _xfleet_values(unit, name)

    def bad(problem: str) -> InvalidUnitOptions:
        return InvalidUnitOptions(f"unit {name}: {problem}")

    for peer in req.machine_of:
        for pattern in req.conflicts:
            if glob_match(pattern, peer):
                raise bad(f"unresolvable requirements: MachineOf peer {peer!r} "
                          f"matches Conflicts {pattern!r}")
        for pattern in req.replaces:
            if glob_match(pattern, peer):
                raise bad(f"unresolvable requirements: MachineOf peer {peer!r} "
                          f"matches Replaces {pattern!r}")

    has = {
        "MachineID": req.machine_id is not None,
        "MachineOf": bool(req.machine_of),
        "Conflicts": bool(req.conflicts),
        "Global": req.is_global,
        "Replaces": bool(req.replaces),
    }
    for first, second in (("MachineID", "MachineOf"), ("MachineID", "Conflicts"),
                          ("MachineID", "Global"), ("MachineID", "Replaces"),
                          ("Global", "MachineOf"), ("Global", "Replaces"),
                          ("Conflicts", "Replaces")):
        if has[first] and has[second]:
            raise bad(f"{first} cannot be combined with {second}")

    for key, words in values:
        if key == RESERVE_CPU_KEY:
            for word in words:
                if parse_cores(word) is None:
                    raise bad(f"ReserveCPU={word!r} is not a non-negative number of cores")
        elif key == RESERVE_MEMORY_KEY:
            for word in words:
                if parse_size(word) is None:
                    raise bad(f"ReserveMemory={word!r} is not a size in bytes "
                              "(e.g. 1073741824, 512M, 2G)")
    for constraint in req.metadata:
        if constraint.op in ORDERING_OPS and not is_number(constraint.value):
            raise bad(f"MachineMetadata {constraint.key}{constraint.op}{constraint.value!r}: "
                      f"operator {constraint.op!r} needs a number")
    # [X-Container] (container units rendered on the node): unknown keys and bad values are errors
    validate_container(unit, name)
    from fleetd.unit.service import validate_services  # [X-Service]: the unit's services

    validate_services(unit, name)
    return req


# --- Go path.Match ----------------------------------------------------------------------

class _BadPattern(Exception):
    pass


def glob_match(pattern: str, name: str) -> bool:
    """Go's path.Match(pattern, name), with a malformed pattern matching nothing (as fleet
    ignores path.Match's error). '*' and '?' never match '/'; classes are [abc], [a-z],
    [^abc]; backslash escapes. Unlike fnmatch, "[!a]" is a class of '!' and 'a'.
    """
    try:
        return _go_match(pattern, name)
    except _BadPattern:
        return False


def is_valid_glob(pattern: str) -> bool:
    """Whether Go's path.Match accepts `pattern` as well-formed."""
    try:
        rest = pattern
        while rest:
            _, chunk, rest = _scan_chunk(rest)
            _match_chunk(chunk, "")
    except _BadPattern:
        return False
    return True


def _go_match(pattern: str, name: str) -> bool:
    while pattern:
        star, chunk, pattern = _scan_chunk(pattern)
        if star and chunk == "":
            return "/" not in name
        t, ok = _match_chunk(chunk, name)
        if ok and (len(t) == 0 or len(pattern) > 0):
            name = t
            continue
        if star:
            i = 0
            matched = False
            while i < len(name) and name[i] != "/":
                t, ok = _match_chunk(chunk, name[i + 1:])
                if ok:
                    if len(pattern) == 0 and len(t) > 0:
                        i += 1
                        continue
                    name = t
                    matched = True
                    break
                i += 1
            if matched:
                continue
        while pattern:  # report a malformed remainder as Go does
            _, chunk, pattern = _scan_chunk(pattern)
            _match_chunk(chunk, "")
        return False
    return len(name) == 0


def _scan_chunk(pattern: str) -> tuple[bool, str, str]:
    star = False
    while pattern and pattern[0] == "*":
        pattern = pattern[1:]
        star = True
    inrange = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 < len(pattern):
                i += 1
        elif c == "[":
            inrange = True
        elif c == "]":
            inrange = False
        elif c == "*" and not inrange:
            return star, pattern[:i], pattern[i:]
        i += 1
    return star, pattern, ""


def _get_esc(chunk: str) -> tuple[str, str]:
    if not chunk or chunk[0] in "-]":
        raise _BadPattern
    if chunk[0] == "\\":
        chunk = chunk[1:]
        if not chunk:
            raise _BadPattern
    r, rest = chunk[0], chunk[1:]
    if not rest:
        raise _BadPattern
    return r, rest


def _match_chunk(chunk: str, s: str) -> tuple[str, bool]:
    failed = False
    while chunk:
        if not failed and not s:
            failed = True
        c = chunk[0]
        if c == "[":
            r = ""
            if not failed:
                r, s = s[0], s[1:]
            chunk = chunk[1:]
            negated = False
            if chunk and chunk[0] == "^":
                negated = True
                chunk = chunk[1:]
            match = False
            nrange = 0
            while True:
                if chunk and chunk[0] == "]" and nrange > 0:
                    chunk = chunk[1:]
                    break
                lo, chunk = _get_esc(chunk)
                hi = lo
                if chunk[0] == "-":
                    hi, chunk = _get_esc(chunk[1:])
                if not failed and lo <= r <= hi:
                    match = True
                nrange += 1
            if match == negated:
                failed = True
        elif c == "?":
            if not failed:
                if s[0] == "/":
                    failed = True
                s = s[1:]
            chunk = chunk[1:]
        else:
            if c == "\\":
                chunk = chunk[1:]
                if not chunk:
                    raise _BadPattern
            if not failed:
                if chunk[0] != s[0]:
                    failed = True
                s = s[1:]
            chunk = chunk[1:]
    if failed:
        return "", False
    return s, True
