"""The [X-Container] section of a unit: parsed, validated, typed. Pure (no I/O).

A unit that carries an [X-Container] section is a *container unit*: the agent renders it into
a plain systemd unit on the node (see fleetd/container/render.py). Keys (values are expanded
with fleet's specifiers %n %N %p %i %% from the unit name, like [X-Fleet]):

    Image=            image name or digest in the node's image store (required)
    Command=          the command, split like a shell line ("..." and '...' group, \\ escapes);
                      empty: the image's Entrypoint+Cmd (OCI config)
    Runtime=          launcher (default: fleet-run) or nspawn (systemd-nspawn)
    Environment=      K=V assignments, space-separated, "..." groups; repeatable
    Port=             PORT[/tcp|/udp], space-separated; repeatable. Informational with the
                      host network (the container's sockets are the node's); needs Network=host
    Bind=             SRC:DST[:ro|:rw], absolute paths, space-separated; repeatable
    Hostname=         hostname inside (default: the container name)
    User=             user[:group] or uid[:gid] from the image
    WorkingDirectory= absolute directory inside
    Network=          host (default) or none (loopback only)
    Memory=           MemoryMax= of the unit (512M, 1G, bytes); also the scheduler's reservation
    CPUs=             CPUQuota= of the unit, in cores (0.5 -> 50%); also the reservation
    Tasks=            TasksMax= of the unit
    StopTimeout=      seconds from the stop signal to SIGKILL (default 10)
    Privileged=       yes/no (default no): all capabilities, no seccomp/NoNewPrivileges hardening
    PrivateUsers=     yes/no (default: yes, no with Privileged=yes): both runtimes run the
                      container in its own user namespace (its root is an unprivileged uid range
                      of the node) where the node's kernel allows it; no opts out

Every single-valued key may appear once. An unknown key, a bad value, or an ExecStart= in
[Service] next to [X-Container] is an InvalidUnitOptions error naming the unit and the key.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from fleetd.errors import InvalidUnitOptions
from fleetd.unit.file import UnitFile
from fleetd.unit.name import is_template_name
from fleetd.unit.values import expand_specifiers, parse_size
from fleetd.values import parse_bool

SECTION = "X-Container"
RUNTIMES = ("launcher", "nspawn")
NETWORKS = ("host", "none")
DEFAULT_RUNTIME = "launcher"
DEFAULT_STOP_TIMEOUT = 10.0

SINGLE_KEYS = ("Image", "Command", "Runtime", "Hostname", "User", "WorkingDirectory", "Network",
               "Memory", "CPUs", "Tasks", "StopTimeout", "Privileged", "PrivateUsers")
MULTI_KEYS = ("Environment", "Port", "Bind")
KNOWN_KEYS = SINGLE_KEYS + MULTI_KEYS

# image references as the store accepts them: a name, or a digest / digest prefix
_IMAGE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_IMAGE_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{6,64}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_USER_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")


@dataclass(frozen=True)
class Port:
    port: int
    protocol: str = "tcp"

    def __str__(self) -> str:
        return f"{self.port}/{self.protocol}"


@dataclass(frozen=True)
class Bind:
    source: str
    destination: str
    read_only: bool = False

    def __str__(self) -> str:
        return f"{self.source}:{self.destination}" + (":ro" if self.read_only else "")


@dataclass(frozen=True)
class ContainerSpec:
    """A validated [X-Container] section, specifiers expanded for the unit's name."""

    image: str
    command: tuple[str, ...] = ()
    runtime: str = DEFAULT_RUNTIME
    environment: tuple[tuple[str, str], ...] = ()
    ports: tuple[Port, ...] = ()
    binds: tuple[Bind, ...] = ()
    hostname: str = ""
    user: str = ""
    workdir: str = ""
    network: str = "host"
    memory: int | None = None        # bytes
    cpus: float | None = None        # cores
    tasks: int | None = None
    stop_timeout: float = DEFAULT_STOP_TIMEOUT
    privileged: bool = False
    private_users: bool = True

    @property
    def cpu_quota_percent(self) -> int | None:
        return None if self.cpus is None else max(1, round(self.cpus * 100))


def is_container_unit(unit: UnitFile) -> bool:
    return any(opt.section == SECTION for opt in unit.options)


def container_spec(unit: UnitFile, name: str) -> ContainerSpec | None:
    """The unit's container spec (None for a plain unit); raises InvalidUnitOptions."""
    if not is_container_unit(unit):
        return None
    return _parse(unit, name, strict_specifiers=True)


def validate_container(unit: UnitFile, name: str) -> None:
    """Submit-time check of [X-Container] (no-op for plain units). For a template
    (`web@.service`), values that contain specifiers are only checked once instantiated."""
    if not is_container_unit(unit):
        return
    _parse(unit, name, strict_specifiers=not is_template_name(name))


def _parse(unit: UnitFile, name: str, strict_specifiers: bool) -> ContainerSpec:
    def bad(key: str, problem: str) -> InvalidUnitOptions:
        return InvalidUnitOptions(f"unit {name}: [{SECTION}] {key}: {problem}")

    if not name.endswith(".service"):
        raise InvalidUnitOptions(f"unit {name}: [{SECTION}] is only for .service units")
    if unit.values("Service", "ExecStart"):
        raise InvalidUnitOptions(f"unit {name}: [Service] ExecStart= cannot be combined with "
                                 f"[{SECTION}] (the container is the unit's ExecStart)")
    single: dict[str, str] = {}
    deferred: set[str] = set()  # template values with specifiers, checked per instance
    multi: dict[str, list[str]] = {k: [] for k in MULTI_KEYS}
    for opt in unit.section(SECTION):
        key = opt.name
        if key not in KNOWN_KEYS:
            raise bad(key, f"unknown key (known: {', '.join(sorted(KNOWN_KEYS))})")
        if "\n" in opt.value:
            raise bad(key, "line continuations are not supported")
        raw = opt.value
        if not strict_specifiers and "%" in raw:
            deferred.add(key)
            continue
        value = expand_specifiers(raw, name)
        if key in MULTI_KEYS:
            multi[key].append(value)
        elif key in single:
            raise bad(key, "given more than once")
        else:
            single[key] = value

    def words(key: str) -> list[str]:
        out: list[str] = []
        for line in multi[key]:
            try:
                out += shlex.split(line)
            except ValueError as exc:
                raise bad(key, f"{line!r}: {exc}") from None
        return out

    image = single.get("Image", "").strip()
    if not image and "Image" in deferred:
        image = "deferred"  # e.g. Image=%i in a template
    if not image:
        raise bad("Image", "required (an image name or sha256: digest)")
    if not (_IMAGE_DIGEST_RE.match(image) or (_IMAGE_NAME_RE.match(image) and not image.startswith("sha256:"))):
        raise bad("Image", f"invalid image reference {image!r} (a name like busybox or "
                           "busybox:1, or sha256:<hex digest>)")

    command: tuple[str, ...] = ()
    if single.get("Command", "").strip():
        try:
            command = tuple(shlex.split(single["Command"]))
        except ValueError as exc:
            raise bad("Command", f"{single['Command']!r}: {exc}") from None

    runtime = single.get("Runtime", DEFAULT_RUNTIME).strip() or DEFAULT_RUNTIME
    if runtime not in RUNTIMES:
        raise bad("Runtime", f"{runtime!r} is not one of {', '.join(RUNTIMES)}")

    env: list[tuple[str, str]] = []
    for item in words("Environment"):
        key, eq, val = item.partition("=")
        if not eq or not _ENV_NAME_RE.match(key):
            raise bad("Environment", f"{item!r} is not NAME=VALUE")
        env.append((key, val))

    network = single.get("Network", "host").strip() or "host"
    if network not in NETWORKS:
        raise bad("Network", f"{network!r} is not one of {', '.join(NETWORKS)}")

    ports: list[Port] = []
    for item in words("Port"):
        m = re.fullmatch(r"(\d{1,5})(?:/(tcp|udp))?", item)
        if not m or not 1 <= int(m.group(1)) <= 65535:
            raise bad("Port", f"{item!r} is not PORT[/tcp|/udp] with PORT in 1..65535")
        ports.append(Port(int(m.group(1)), m.group(2) or "tcp"))
    if ports and network != "host":
        raise bad("Port", f"needs Network=host (the container's ports are the node's), not {network}")

    binds: list[Bind] = []
    for item in words("Bind"):
        parts = item.split(":")
        mode = ""
        if len(parts) == 3:
            mode = parts.pop()
        if len(parts) != 2 or mode not in ("", "ro", "rw"):
            raise bad("Bind", f"{item!r} is not SRC:DST[:ro|:rw]")
        src, dst = parts
        for path in (src, dst):
            if not path.startswith("/") or any(c in path for c in ",\\") or "/../" in path + "/":
                raise bad("Bind", f"{item!r}: {path!r} must be an absolute path without '..', ',' or '\\'")
        binds.append(Bind(src, dst, mode == "ro"))

    hostname = single.get("Hostname", "").strip()
    if hostname and (len(hostname) > 64 or not _HOSTNAME_RE.match(hostname)):
        raise bad("Hostname", f"{hostname!r} is not a valid hostname")

    user = single.get("User", "").strip()
    if user and not all(_USER_PART_RE.match(p) for p in user.split(":", 1)):
        raise bad("User", f"{user!r} is not user[:group] or uid[:gid]")

    workdir = single.get("WorkingDirectory", "").strip()
    if workdir and (not workdir.startswith("/") or any(c in workdir for c in "\n\\")):
        raise bad("WorkingDirectory", f"{workdir!r} must be an absolute path")

    memory = None
    if single.get("Memory", "").strip():
        memory = parse_size(single["Memory"])
        if not memory:
            raise bad("Memory", f"{single['Memory']!r} is not a size such as 256M, 1G or 1048576")
        if memory < 4096:
            raise bad("Memory", f"{single['Memory']!r} is too small (at least 4K)")

    cpus = None
    if single.get("CPUs", "").strip():
        try:
            cpus = float(single["CPUs"])
        except ValueError:
            cpus = None
        if cpus is None or not 0.01 <= cpus <= 4096:
            raise bad("CPUs", f"{single['CPUs']!r} is not a number of cores such as 0.5 or 2")

    tasks = None
    if single.get("Tasks", "").strip():
        if not re.fullmatch(r"[0-9]+", single["Tasks"].strip()) or int(single["Tasks"]) < 1:
            raise bad("Tasks", f"{single['Tasks']!r} is not a positive integer")
        tasks = int(single["Tasks"])

    stop_timeout = DEFAULT_STOP_TIMEOUT
    if single.get("StopTimeout", "").strip():
        try:
            stop_timeout = float(single["StopTimeout"].strip().removesuffix("s"))
        except ValueError:
            stop_timeout = -1
        if not 0 <= stop_timeout <= 3600:
            raise bad("StopTimeout", f"{single['StopTimeout']!r} is not a number of seconds (0..3600)")

    privileged = False
    if single.get("Privileged", "").strip():
        flag = parse_bool(single["Privileged"])
        if flag is None:
            raise bad("Privileged", f"{single['Privileged']!r} is not a boolean (yes/no)")
        privileged = flag
    private_users = not privileged
    if single.get("PrivateUsers", "").strip():
        flag = parse_bool(single["PrivateUsers"])
        if flag is None:
            raise bad("PrivateUsers", f"{single['PrivateUsers']!r} is not a boolean (yes/no)")
        private_users = flag

    return ContainerSpec(
        image=image, command=command, runtime=runtime, environment=tuple(env),
        ports=tuple(ports), binds=tuple(binds), hostname=hostname, user=user, workdir=workdir,
        network=network, memory=memory, cpus=cpus, tasks=tasks, stop_timeout=stop_timeout,
        privileged=privileged, private_users=private_users,
    )
