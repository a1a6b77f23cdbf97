"""Unit names and unit files for fleetctl's fast path, on the standard library alone: ports of
fleetd.unit.name (mangling, validation of plain names), fleetd.unit.file (parse, serialize, hash)
and fleetd.wire (options, Go's JSON), which import dataclasses, typing and the whole fleetd.unit
package (~45 ms). tests/unit/test_fleetctl_fast_units.py checks them against those, with
hypothesis; `quick_options` answers None for any text it is not sure of (the full CLI reads it)."""

from __future__ import annotations

from fleetctl.lean import dumps

# ---------------------------------------------------------------------------- unit names

#: fleetd.unit.name: unit types, and the suffixes fleetctl's mangling keeps
UNIT_TYPES = frozenset({"automount", "busname", "device", "mount", "path", "scope", "service", "slice",
                        "snapshot", "socket", "swap", "target", "timer"})
RECOGNIZED_TYPES = ("service", "socket", "timer", "path", "device", "mount", "automount")
# fleet's characters without "@" ([a-zA-Z0-9:_.\-\\]{1,256}; no re: fleetctl/lean.py)
_PLAIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.-\\")


def mangle(arg: str) -> str:
    """fleetctl's unitNameMangle (fleetd.unit.name.mangle_unit_name)."""
    name = arg.rstrip("/")
    name = "." if arg == "" else "/" if name == "" else name[name.rfind("/") + 1:]
    if any(name.endswith("." + t) for t in RECOGNIZED_TYPES):
        return name
    return name + ".service"


def is_plain_name(name: str) -> bool:
    """A valid unit name that is neither a template nor an instance (fleetd.unit.name)."""
    if not 0 < len(name) <= 256 or not _PLAIN_CHARS.issuperset(name):
        return False
    dot = name.rfind(".")
    return 0 < dot < len(name) - 1 and name[dot + 1:] in UNIT_TYPES


# ---------------------------------------------------------------------------- unit files

# Go's unicode.IsSpace (fleetd.unit.file._GO_SPACE)
GO_SPACE = ("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
            "\u2028\u2029\u202f\u205f\u3000")
# refused here (the full parser refuses most, accepts CR before LF: left to it)
_CONTROL = frozenset([*map(chr, range(0x00, 0x09)), *map(chr, range(0x0b, 0x20)), *map(chr, range(0x7f, 0xa0))])
LINE_MAX = 2048


def quick_options(data: bytes) -> list[tuple[str, str, str]] | None:
    """The (section, name, value) options of a unit file, in serialization order, exactly as
    `fleetd.unit.file.UnitFile.parse(data).options` has them; None when the text is not one this
    port is sure of (CR, control characters, lines too long, errors...): the full CLI reads it."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not _CONTROL.isdisjoint(text):
        return None
    lines = text.split("\n")
    if any(len(line) * 4 >= LINE_MAX and len(line.encode()) >= LINE_MAX for line in lines):
        return None
    n, i = len(lines), 0
    options: list[tuple[str, str, str]] = []
    section = None
    while i < n:
        if i == n - 1 and lines[i] == "":
            break
        line = lines[i]
        i += 1
        rest = line.lstrip(GO_SPACE)
        if not rest:
            continue
        if rest[0] in "#;":
            rest = rest[1:]
            while True:  # a comment ending in a backslash swallows the next line
                if rest.endswith(" "):
                    rest = rest[:-1]
                if not rest.endswith("\\") or i >= n:
                    break
                rest = lines[i]
                i += 1
        elif rest[0] == "[":
            end = rest.find("]", 1)
            if end == -1 or rest[end + 1:].strip(GO_SPACE):
                return None
            section = rest[1:end]
        elif section is None:
            return None
        else:
            eq = rest.find("=")
            if eq == -1:
                return None
            name = rest[:eq].strip(GO_SPACE)
            value = rest[eq + 1:]
            parts = []
            while value.strip(GO_SPACE):
                parts.append(value)
                if not value.endswith("\\"):
                    break
                parts.append("\n")
                if i >= n or (i == n - 1 and lines[i] == ""):
                    break
                value = lines[i]
                i += 1
            joined = "".join(parts)
            if joined.endswith("\n"):
                value = joined.strip(GO_SPACE) + "\n"
            else:
                value = joined.strip(GO_SPACE)
                if value.endswith("\\"):
                    return None
            options.append((section, name, value))
    order: dict[str, list] = {}
    for opt in options:
        order.setdefault(opt[0], []).append(opt)
    return [opt for group in order.values() for opt in group]


def serialize(options: list[tuple[str, str, str]]) -> str:
    """go-systemd's Serialize of grouped options (fleetd.unit.file.UnitFile.serialize)."""
    parts: list[str] = []
    section = None
    for sec, name, value in options:
        if sec != section:
            if section is not None:
                parts.append("\n")
            parts.append(f"[{sec}]\n")
            section = sec
        parts.append(f"{name}={value}\n")
    return "".join(parts)


def unit_hash(options: list[tuple[str, str, str]]) -> str:
    import hashlib

    return hashlib.sha1(serialize(options).encode("utf-8")).hexdigest()


def wire_options(options: list[tuple[str, str, str]]) -> list[dict[str, str]]:
    """fleetd.wire.options_to_wire (empty fields left out, as Go's omitempty)."""
    return [{k: v for k, v in (("name", n), ("section", s), ("value", v)) if v} for s, n, v in options]


def options_from_wire(data: dict) -> list[tuple[str, str, str]] | None:
    """A unit's options from the API, grouped by section; None if they are not plain strings."""
    raw = data.get("options") or []
    if not isinstance(raw, list):
        return None
    options = []
    for opt in raw:
        if not isinstance(opt, dict) or set(opt) - {"section", "name", "value"}:
            return None
        fields = tuple(opt.get(k) or "" for k in ("section", "name", "value"))
        if not all(isinstance(f, str) for f in fields):
            return None
        options.append(fields)
    order: dict[str, list] = {}
    for opt in options:
        order.setdefault(opt[0], []).append(opt)
    return [opt for group in order.values() for opt in group]


def go_json(value) -> bytes:
    """fleetd.wire.go_json: compact JSON as Go writes it."""
    text = dumps(value)  # json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    text = (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    return text.encode("utf-8")
