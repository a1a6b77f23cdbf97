"""The [X-Service] section of a unit: the services it serves, parsed and validated. Pure (no I/O).

    [X-Service]
    Name=web                    # DNS label: a-z 0-9 -, 1-63 chars, no leading/trailing -
    Port=8080                   # 1-65535
    Protocol=http               # http | tcp | udp (default tcp)
    Tags=blue,v2                # comma or space separated labels
    Check=http://:8080/health   # http(s)://[host]:port/path, tcp://[host]:port, or a command
    CheckInterval=2s            # default 5s
    CheckTimeout=1s             # default: the interval, at most 2s
    Rise=1                      # consecutive passes before an endpoint is published (default 1)
    Fall=2                      # consecutive failures before it is withdrawn (default 2)
    Weight=10                   # SRV weight (default 10)
    Priority=10                 # SRV priority (default 10)

A unit may declare several services: each `Name=` starts a new one (in one section, or in
several [X-Service] sections, which the unit parser joins in order). Values are expanded with
fleet's specifiers %n %N %p %i %% from the unit name; %H (the machine's hostname) is expanded
by the agent that publishes. Without Check=, an endpoint is healthy while its unit is active.
A bad value, an unknown key, a key before the first Name= or a service named twice is an
InvalidUnitOptions error naming the unit, the service and the key.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from fleetd.errors import InvalidUnitOptions
from fleetd.unit.file import UnitFile
from fleetd.unit.values import expand_specifiers

SECTION = "X-Service"
PROTOCOLS = ("http", "tcp", "udp")
KEYS = ("Name", "Port", "Protocol", "Tags", "Check", "CheckInterval", "CheckTimeout", "Rise", "Fall",
        "Weight", "Priority")
DEFAULT_INTERVAL = 5.0
MAX_DEFAULT_TIMEOUT = 2.0

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=-]{0,62}$")
_DURATION = re.compile(r"^([0-9]*\.?[0-9]+)(ms|s|m)?$")
_SPECIFIER = re.compile(r"%(.)")


@dataclass(frozen=True)
class Check:
    kind: str  # "http" | "tcp" | "command"
    target: str  # the URL (host filled in by the agent when empty), host:port, or the command line
    interval: float = DEFAULT_INTERVAL
    timeout: float = MAX_DEFAULT_TIMEOUT
    rise: int = 1
    fall: int = 2

    def argv(self) -> list[str]:
        return shlex.split(self.target)


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    port: int
    protocol: str = "tcp"
    tags: tuple[str, ...] = ()
    check: Check | None = None
    weight: int = 10
    priority: int = 10

    @property
    def transport(self) -> str:
        """The SRV protocol label: udp for udp services, tcp otherwise (http runs over tcp)."""
        return "udp" if self.protocol == "udp" else "tcp"


def has_services(unit: UnitFile) -> bool:
    return SECTION in unit.sections()


def is_label(name: str) -> bool:
    return bool(_LABEL.match(name))


def unit_label(unit_name: str) -> str:
    """A DNS label for a unit name (for `<unit>.<service>.<domain>`): the name without its
    .service suffix, lower-cased, every character outside [a-z0-9-] made "-" ("web@1.service"
    -> "web-1"), trimmed to 63 characters and of leading/trailing "-"."""
    base = unit_name.rsplit(".", 1)[0] if "." in unit_name else unit_name
    label = re.sub(r"[^a-z0-9-]", "-", base.lower())[:63].strip("-")
    return label or "unit"


def parse_duration(text: str) -> float | None:
    m = _DURATION.match(text.strip())
    if not m:
        return None
    value = float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
    return value if value > 0 else None


def expand(value: str, unit_name: str, hostname: str | None = None) -> str:
    """%n %N %p %i %% from the unit name; %H from `hostname` (kept as is when None)."""

    if hostname is not None and "%H" in value:
        # expand %H first, leaving %% alone
        value = _SPECIFIER.sub(lambda m: hostname if m.group(1) == "H" else m.group(0), value)
    return expand_specifiers(value, unit_name)


def services_of(unit: UnitFile, unit_name: str, hostname: str | None = None) -> tuple[ServiceSpec, ...]:
    """The unit's services, validated; raise InvalidUnitOptions for the first problem.

    For a template (`web@.service`), call with the template name: values are checked with
    specifiers left in place where they cannot be known yet (e.g. Port=80%i)."""
    from fleetd.unit.name import unit_name_info

    info = unit_name_info(unit_name)
    template = info is not None and info[3] == "" and "@" in unit_name
    groups: list[list[tuple[str, str]]] = []
    for opt in unit.section(SECTION):
        if opt.name not in KEYS:
            raise InvalidUnitOptions(f"unit {unit_name}: [X-Service] unknown key {opt.name!r} "
                                     f"(known: {', '.join(KEYS)})")
        if opt.name == "Name":
            groups.append([])
        elif not groups:
            raise InvalidUnitOptions(f"unit {unit_name}: [X-Service] {opt.name}= before the first Name=")
        groups[-1].append((opt.name, opt.value))
    services: list[ServiceSpec] = []
    for group in groups:
        services.append(_service(group, unit_name, hostname, template))
    seen: set[str] = set()
    for spec in services:
        if spec.name in seen and not template:
            raise InvalidUnitOptions(f"unit {unit_name}: [X-Service] service {spec.name!r} declared twice")
        seen.add(spec.name)
    return tuple(services)


def _service(group: list[tuple[str, str]], unit_name: str, hostname: str | None, template: bool) -> ServiceSpec:
    values: dict[str, str] = {}
    raw_name = group[0][1]  # each group starts with its Name=
    for key, raw in group[1:]:
        if key in values:
            raise InvalidUnitOptions(f"unit {unit_name}: [X-Service] service {raw_name!r}: {key}= given twice")
        values[key] = raw

    def deferred(raw: str) -> bool:  # a template's specifier, known only per instance
        return template and "%" in raw

    def bad(key: str, problem: str) -> InvalidUnitOptions:
        return InvalidUnitOptions(f"unit {unit_name}: [X-Service] service {raw_name!r}: {key}= {problem}")

    def get(key: str) -> str | None:
        raw = values.get(key)
        return None if raw is None else expand(raw, unit_name, hostname)

    name = expand(raw_name, unit_name, hostname)
    if not deferred(raw_name) and not is_label(name):
        raise bad("Name", f"{name!r} is not a DNS label (a-z, 0-9, -; 1-63 characters; no leading or "
                          "trailing -)")
    port_raw = get("Port")
    if port_raw is None:
        raise bad("Port", "is required")
    port = 0
    if not deferred(values["Port"]):
        if not re.fullmatch(r"[0-9]+", port_raw) or not 1 <= int(port_raw) <= 65535:
            raise bad("Port", f"{port_raw!r} is not a port number (1-65535)")
        port = int(port_raw)
    protocol = (get("Protocol") or "tcp").lower()
    if protocol not in PROTOCOLS:
        raise bad("Protocol", f"{protocol!r} is not one of {', '.join(PROTOCOLS)}")
    tags = tuple(t for t in re.split(r"[,\s]+", get("Tags") or "") if t)
    for tag in tags:
        if not deferred(values.get("Tags", "")) and not _TAG.match(tag):
            raise bad("Tags", f"{tag!r} is not a tag (letters, digits, _ . : = -; at most 63 characters)")

    def number(key: str, default: int, low: int, high: int) -> int:
        raw = get(key)
        if raw is None or deferred(values[key]):
            return default
        if not re.fullmatch(r"[0-9]+", raw) or not low <= int(raw) <= high:
            raise bad(key, f"{raw!r} is not a whole number from {low} to {high}")
        return int(raw)

    def duration(key: str, default: float) -> float:
        raw = get(key)
        if raw is None or deferred(values[key]):
            return default
        seconds = parse_duration(raw)
        if seconds is None or seconds > 3600:
            raise bad(key, f"{raw!r} is not a duration (e.g. 2s, 500ms, 1m; at most 1h)")
        return seconds

    interval = duration("CheckInterval", DEFAULT_INTERVAL)
    timeout = duration("CheckTimeout", min(interval, MAX_DEFAULT_TIMEOUT))
    rise = number("Rise", 1, 1, 100)
    fall = number("Fall", 2, 1, 100)
    weight = number("Weight", 10, 0, 65535)
    priority = number("Priority", 10, 0, 65535)
    check = None
    check_raw = get("Check")
    if check_raw is not None and check_raw.strip():
        kind, target = _check_target(check_raw.strip(), deferred(values["Check"]), lambda p: bad("Check", p))
        check = Check(kind, target, interval, timeout, rise, fall)
    return ServiceSpec(name, port, protocol, tags, check, weight, priority)


def _check_target(raw: str, deferred: bool, bad) -> tuple[str, str]:
    lowered = raw.lower()
    if lowered.startswith(("http://", "https://")):
        if deferred:
            return "http", raw
        url = urlsplit(raw)
        try:
            port = url.port
        except ValueError:
            raise bad(f"{raw!r}: bad port in the URL") from None
        host = url.hostname or ""
        if port is None and not host:
            raise bad(f"{raw!r}: the URL needs a host or a port (e.g. http://:8080/health)")
        if any(c.isspace() for c in raw):
            raise bad(f"{raw!r}: a URL cannot contain blanks")
        return "http", raw
    if lowered.startswith("tcp://"):
        if deferred:
            return "tcp", raw
        rest = raw[6:]
        host, sep, port = rest.rpartition(":")
        if not sep or not re.fullmatch(r"[0-9]+", port) or not 1 <= int(port) <= 65535 or "/" in rest:
            raise bad(f"{raw!r}: expected tcp://[host]:port")
        return "tcp", rest
    if "://" in raw.split(" ", 1)[0]:
        raise bad(f"{raw!r}: unknown check scheme (http://, https://, tcp:// or a command)")
    try:
        argv = shlex.split(raw)
    except ValueError as exc:
        raise bad(f"{raw!r}: cannot split the command: {exc}") from None
    if not argv:
        raise bad("empty command")
    return "command", raw


def validate_services(unit: UnitFile, name: str) -> None:
    """Submit-time check of [X-Service] (no-op for a unit without one)."""
    if has_services(unit):
        services_of(unit, name)


def with_host(spec: ServiceSpec, host: str) -> ServiceSpec:
    """The check with an empty URL/TCP host filled in with the endpoint's address."""
    check = spec.check
    if check is None:
        return spec
    if check.kind == "http":
        url = urlsplit(check.target)
        if not url.hostname:
            netloc = f"{host}:{url.port}" if url.port else host
            target = url._replace(netloc=netloc).geturl()
            return replace(spec, check=replace(check, target=target))
    elif check.kind == "tcp" and check.target.startswith(":"):
        return replace(spec, check=replace(check, target=f"{host}{check.target}"))
    return spec


def service_section(name: str, port: int, protocol: str = "tcp") -> list[tuple[str, str, str]]:
    """The options `fleetctl run --service NAME` adds: (section, key, value)."""
    return [(SECTION, "Name", name), (SECTION, "Port", str(port)), (SECTION, "Protocol", protocol)]
