"""Render a container unit into the plain systemd unit the agent writes to disk. Pure.

`render_unit(name, unit, facts, image)`:

* a unit without an [X-Container] section is returned unchanged (its serialization);
* a container unit goes through the jinja2 template of its runtime,
  `templates/launcher.service.j2` (fleet-run) or `templates/nspawn.service.j2`
  (systemd-nspawn), with the node's facts (`NodeFacts`: where fleet-run, systemd-nspawn and
  the image store are) and the image as resolved on the node (`ImageInfo`: digest, rootfs,
  OCI config);
* a container unit that cannot run on the node (`CannotRun`: image missing everywhere,
  command not in the image, ...) becomes `templates/cannot-run.service.j2`: a unit whose
  start fails at once and logs the reason, so that `fleetctl list-units` shows it failed
  and `fleetctl status`/`journal` show why.

The first line of every rendered container unit is ``# fleet-hash: <sha1>``, the hash of
the *stored* (declarative) unit: the agent compares that, not the rendered text's hash, with
the desired hash (`stored_hash_of`). The [X-Container] section itself is dropped; every
other section is kept, the user's [Service] options come after the rendered ones (so they
win for single-valued settings, e.g. Restart=, TimeoutStopSec=).

Words on an ExecStart= line are quoted for systemd (`sd_quote`): "%" and "$" are doubled, so
that neither specifiers nor environment variables are expanded in the container's command
(specifiers in [X-Container] values were already expanded by fleet, like [X-Fleet]).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fleetd.container.marker import HASH_COMMENT, stored_hash_of  # noqa: F401 (re-exported)
from fleetd.unit.container import ContainerSpec, container_spec
from fleetd.errors import FleetError
from fleetd.launcher.idrange import USERNS_SIZE, userns_base
from fleetd.unit.file import UnitFile, UnitOption

if TYPE_CHECKING:  # imported when a container unit is rendered: ~2 MB of fleetd's idle RSS otherwise
    import jinja2

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"
TEMPLATE_OF_RUNTIME = {"launcher": "launcher.service.j2", "nspawn": "nspawn.service.j2"}
CANNOT_RUN_TEMPLATE = "cannot-run.service.j2"
CANNOT_RUN_EXIT = 125

_SAFE_WORD_RE = re.compile(r"^[A-Za-z0-9_@%+=:,./$-]+$")

#: capabilities no container runtime here needs (dropped from the unit's bounding set)
DROPPED_CAPABILITIES = ("CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_TIME", "CAP_WAKE_ALARM",
                        "CAP_BLOCK_SUSPEND", "CAP_MAC_ADMIN", "CAP_MAC_OVERRIDE", "CAP_SYSLOG",
                        "CAP_SYS_PACCT")
#: system call groups denied (EPERM) to the runtime and the container. Not @mount/@privileged
#: (the runtimes build the container with them), not @reboot (nspawn's stub init powers the
#: container off with reboot(2) inside its PID namespace). fleet-run then loads a stricter
#: filter of its own into the container (fleetd/launcher/seccomp.py: @mount, namespaces, ...).
DENIED_SYSCALLS = ("@clock", "@cpu-emulation", "@debug", "@module", "@obsolete", "@raw-io", "@swap")


class RenderError(FleetError):
    """A container unit could not be rendered (template missing or broken)."""


@dataclass(frozen=True)
class NodeFacts:
    """Where things are on the node that runs the unit."""

    fleet_run: str = "/usr/bin/fleet-run"
    nspawn: str = "/usr/bin/systemd-nspawn"
    images_dir: str = "/var/lib/fleet/images"
    resolv_conf: str = ""  # fleetd's DNS for containers (bound on /etc/resolv.conf); "": none
    userns: bool = False  # the kernel gives root user namespaces (user.max_user_namespaces > 0)

    def to_json(self) -> dict:
        data: dict = {"fleetRun": self.fleet_run, "nspawn": self.nspawn, "imagesDir": self.images_dir}
        if self.resolv_conf:
            data["resolvConf"] = self.resolv_conf
        if self.userns:
            data["userns"] = True
        return data

    @classmethod
    def from_json(cls, data: dict | None) -> "NodeFacts":
        data = data or {}
        default = cls()
        return cls(fleet_run=str(data.get("fleetRun") or default.fleet_run),
                   nspawn=str(data.get("nspawn") or default.nspawn),
                   images_dir=str(data.get("imagesDir") or default.images_dir),
                   resolv_conf=str(data.get("resolvConf") or ""),
                   userns=bool(data.get("userns", False)))  # older fleetds: none


@dataclass(frozen=True)
class ImageInfo:
    """An image as found in the node's store (`ref` as written in Image=)."""

    ref: str
    digest: str
    rootfs: str
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""


@dataclass(frozen=True)
class CannotRun:
    """Why the container cannot run on this node (rendered as a unit that fails saying so)."""

    message: str


@dataclass(frozen=True)
class _Section:
    name: str
    options: tuple[UnitOption, ...] = field(default_factory=tuple)


# --------------------------------------------------------------------------- systemd quoting


def sd_quote(word: str) -> str:
    """One word of an Exec*= command line, literal for systemd (no specifier, no $ expansion)."""
    word = str(word)
    escaped = word.replace("%", "%%").replace("$", "$$")
    if word == ";":
        return "\\;"
    if word and _SAFE_WORD_RE.match(word):
        return escaped
    out = []
    for ch in escaped:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def sd_join(words) -> str:
    return " ".join(sd_quote(w) for w in words)


# --------------------------------------------------------------------------- helpers


def container_name(unit_name: str) -> str:
    """The container's name for a unit (fleet-run --name, nspawn --machine, its runtime
    directory): the unit name without the suffix when that is a valid container name;
    otherwise ('@', ':', too long) a cleaned form plus a short hash of the unit name, so
    that two units never share a container name (web@1 and web-1 do not collide)."""
    base = unit_name.rsplit(".", 1)[0] if "." in unit_name else unit_name
    clean = re.sub(r"[^A-Za-z0-9_.-]", "-", base).lstrip("-_.") or "container"
    if clean != base or len(clean) > 56:
        clean = f"{clean[:48].rstrip('-_.')}-{hashlib.sha1(unit_name.encode()).hexdigest()[:6]}"
    return clean


def default_hostname(unit_name: str) -> str:
    base = unit_name.rsplit(".", 1)[0] if "." in unit_name else unit_name
    host = re.sub(r"[^A-Za-z0-9-]+", "-", base).strip("-")[:63].strip("-")
    return host or "container"


# user namespaces (both runtimes): USERNS_SIZE ids at userns_base(container name), see
# fleetd.launcher.idrange. nspawn's `pick` cannot be used with the image overlay ("may not be
# combined with custom root mounts"), hence a fixed range.
def effective_command(spec: ContainerSpec, image: ImageInfo) -> tuple[str, ...]:
    """Command= if given (it replaces the image's Entrypoint and Cmd), else Entrypoint + Cmd."""
    if spec.command:
        return spec.command
    return tuple(image.entrypoint) + tuple(image.cmd)


def effective_environment(spec: ContainerSpec, image: ImageInfo) -> tuple[tuple[str, str], ...]:
    """The image's Env, then Environment= (later wins, order of first appearance kept)."""
    env: dict[str, str] = {}
    for item in image.env:
        key, eq, value = item.partition("=")
        if eq and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            env[key] = value
    for key, value in spec.environment:
        env[key] = value
    return tuple(env.items())


@functools.lru_cache(maxsize=8)
def _environment(templates: str) -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["sd"] = sd_quote
    env.filters["sdjoin"] = sd_join
    return env


def _sections(unit: UnitFile) -> tuple[_Section | None, tuple[UnitOption, ...], list[_Section]]:
    """([Unit] section or None, the user's [Service] options, the other sections in order)."""
    head = None
    service: tuple[UnitOption, ...] = ()
    rest: list[_Section] = []
    for name in unit.sections():
        if name == "X-Container":
            continue
        options = unit.section(name)
        if name == "Unit":
            head = _Section(name, options)
        elif name == "Service":
            service = options
        else:
            rest.append(_Section(name, options))
    return head, service, rest


# --------------------------------------------------------------------------- rendering


def render_unit(name: str, unit: UnitFile, facts: NodeFacts, image: ImageInfo | CannotRun | None,
                *, templates: str | Path | None = None) -> str:
    """The unit file text to write on the node (see the module docstring).

    `image` is None only for plain units; InvalidUnitOptions propagates for a bad
    [X-Container] (the agent renders such a unit as CannotRun instead, see render_or_explain).
    """
    spec = container_spec(unit, name)
    if spec is None:
        return unit.serialize()
    if image is None:
        image = CannotRun(f'image "{spec.image}" was not resolved on this machine')
    if isinstance(image, ImageInfo) and not effective_command(spec, image):
        image = CannotRun(f'no Command= and image "{spec.image}" ({image.digest}) declares no '
                          "Entrypoint or Cmd")
    head, service, rest = _sections(unit)
    env = _environment(str(templates or TEMPLATES_DIR))
    common = dict(name=name, stored_hash=unit.hash, head=head, service=service, rest=rest,
                  spec=spec, facts=facts)
    if isinstance(image, CannotRun):
        return _render(env, CANNOT_RUN_TEMPLATE, **common, message=_one_line(f"fleet: unit {name}: {image.message}"),
                       exit_code=CANNOT_RUN_EXIT)
    cname = container_name(name)
    return _render(
        env, TEMPLATE_OF_RUNTIME[spec.runtime], **common, image=image, cname=cname,
        hostname=spec.hostname or default_hostname(name),
        command=effective_command(spec, image),
        environment=effective_environment(spec, image),
        workdir=spec.workdir or image.workdir,
        user=spec.user or image.user,
        rundir=f"/run/fleet/nspawn/{cname}",
        state_dir=f"/run/fleet/containers/{cname}",
        stop_timeout=_seconds(spec.stop_timeout),
        kill_timeout=_seconds(spec.stop_timeout + 5),
        userns=(f"{userns_base(cname)}:{USERNS_SIZE}" if spec.private_users and facts.userns else ""),
        dropped_caps=" ".join(DROPPED_CAPABILITIES),
        denied_syscalls=" ".join(DENIED_SYSCALLS),
    )


def render_or_explain(name: str, unit: UnitFile, facts: NodeFacts, image: ImageInfo | CannotRun | None,
                      *, templates: str | Path | None = None) -> str:
    """render_unit, but a unit whose [X-Container] does not validate (it was submitted some
    other way than fleetctl/the API) is rendered as CannotRun with the validation error."""
    from fleetd.errors import InvalidUnitOptions

    try:
        return render_unit(name, unit, facts, image, templates=templates)
    except InvalidUnitOptions as exc:
        bare = UnitFile(tuple(o for o in unit.options if o.section != "X-Container" and
                              not (o.section == "Service" and o.name == "ExecStart")))
        env = _environment(str(templates or TEMPLATES_DIR))
        head, service, rest = _sections(bare)
        return _render(env, CANNOT_RUN_TEMPLATE, name=name, stored_hash=unit.hash, head=head,
                       service=(), rest=rest, spec=None, facts=facts, message=_one_line(f"fleet: {exc}"),
                       exit_code=CANNOT_RUN_EXIT)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _render(env: jinja2.Environment, template: str, **context) -> str:
    import jinja2

    try:
        text = env.get_template(template).render(**context)
    except jinja2.TemplateNotFound:
        raise RenderError(f"container unit template {template} not found in {env.loader.searchpath}") from None
    except jinja2.TemplateError as exc:
        raise RenderError(f"container unit template {template}: {exc}") from None
    if not text.startswith(HASH_COMMENT):
        raise RenderError(f"container unit template {template}: must start with '{HASH_COMMENT}<hash>'")
    return re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"
