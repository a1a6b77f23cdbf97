"""Composing container units for fleetctl's container commands (fleetctl/commands/containers.py):
the units `run` and `run-pod` submit. Pure functions of the options (no cluster access).

    fleetctl run NAME --image IMAGE [--runtime nspawn|launcher] [--port P] [--env K=V]
                 [--memory 256M] [--cpus 0.5] [--global] [--conflicts GLOB] [--count N] -- CMD...
    fleetctl run-pod POD --container 'NAME --image IMAGE [options] -- CMD...' --container ...
    fleetctl images
    fleetctl image import FILE [--name N] [--machine M]

`run` composes container units (an [X-Container] section, see fleetd/unit/container.py),
NAME.service or NAME@1..N.service with --count, submits and starts them, and waits until each
runs or fails. `run-pod` does the same for a pod: the first container is the main one, the
others are its helpers (POD-<name>.service, each with MachineOf= and BindsTo=/After= the main
unit: co-scheduled on its machine, stopped with it). `images` lists the images per machine
(from P/images/ in etcd, or from each machine's image server with the API driver). `image
import` asks a machine's fleetd to import an archive: fleetctl serves the file over HTTP for
the time of the import and the machine downloads it (etcd driver).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any, Sequence

import click

from fleetctl.commands.common import CommandFailed
from fleetctl.commands.unitops import check_unit
from fleetd.unit.container import DEFAULT_RUNTIME, RUNTIMES
from fleetd.unit.file import UnitFile
from fleetd.unit.name import parse_unit_name


# ---------------------------------------------------------------------------- composing units


@dataclass(frozen=True)
class ContainerOptions:
    """What `run` (or one --container of run-pod) asks for."""

    image: str
    command: tuple[str, ...] = ()
    runtime: str = DEFAULT_RUNTIME
    ports: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    binds: tuple[str, ...] = ()
    memory: str = ""
    cpus: str = ""
    tasks: str = ""
    user: str = ""
    workdir: str = ""
    hostname: str = ""
    network: str = ""
    stop_timeout: str = ""
    privileged: bool = False
    restart: str = "no"


def _lit(value: str) -> str:
    """A value written into [X-Container]: literal (fleet expands %i etc. in that section)."""
    return value.replace("%", "%%")


def container_section(opts: ContainerOptions) -> list[tuple[str, str, str]]:
    out = [("X-Container", "Image", _lit(opts.image))]
    if opts.command:
        out.append(("X-Container", "Command", _lit(shlex.join(opts.command))))
    if opts.runtime != DEFAULT_RUNTIME:
        out.append(("X-Container", "Runtime", opts.runtime))
    for item in opts.env:
        if "=" not in item:
            raise CommandFailed(f"--env {item!r}: expected KEY=VALUE")
        out.append(("X-Container", "Environment", _lit(shlex.join([item]))))
    for port in opts.ports:
        out.append(("X-Container", "Port", _lit(port)))
    for bind in opts.binds:
        out.append(("X-Container", "Bind", _lit(shlex.join([bind]))))
    for key, value in (("Memory", opts.memory), ("CPUs", opts.cpus), ("Tasks", opts.tasks),
                       ("User", opts.user), ("WorkingDirectory", opts.workdir),
                       ("Hostname", opts.hostname), ("Network", opts.network),
                       ("StopTimeout", opts.stop_timeout)):
        if value:
            out.append(("X-Container", key, _lit(value)))
    if opts.privileged:
        out.append(("X-Container", "Privileged", "yes"))
    return out


def compose_unit(name: str, opts: ContainerOptions, *, description: str = "",
                 unit_options: Sequence[tuple[str, str]] = (),
                 fleet_options: Sequence[tuple[str, str]] = ()) -> UnitFile:
    """The unit `fleetctl run` submits for one container (validated like `fleetctl submit`)."""
    what = f"{opts.image}" + (f" {shlex.join(opts.command)}" if opts.command else "")
    options: list[tuple[str, str, str]] = [
        ("Unit", "Description", _lit(description or f"container {what}"[:200]).replace("\n", " "))]
    options += [("Unit", k, v) for k, v in unit_options]
    if opts.restart and opts.restart != "no":
        options.append(("Service", "Restart", opts.restart))
    options += container_section(opts)
    options += [("X-Fleet", k, v) for k, v in fleet_options]
    unit = UnitFile.from_options(options, source=name)
    check_unit(name, unit)
    return unit


def container_options(fn):
    """The per-container options of `run` and of run-pod's --container."""
    decorators = [
        click.option("--image", required=True, help="Image name or sha256: digest (in the machines' image stores)."),
        click.option("--runtime", type=click.Choice(RUNTIMES), default=DEFAULT_RUNTIME, show_default=True,
                     help="launcher: fleet-run (fleetd's own namespaces); nspawn: systemd-nspawn."),
        click.option("--port", "ports", multiple=True, metavar="PORT[/tcp|udp]",
                     help="A port the container listens on (host network: on the machine's address). Repeatable."),
        click.option("--env", "-e", "env", multiple=True, metavar="K=V", help="Environment variable. Repeatable."),
        click.option("--bind", "binds", multiple=True, metavar="SRC:DST[:ro]", help="Bind a machine path. Repeatable."),
        click.option("--memory", default="", help="Memory limit (MemoryMax=), e.g. 256M; also reserved by the scheduler."),
        click.option("--cpus", default="", help="CPU limit in cores (CPUQuota=), e.g. 0.5; also reserved."),
        click.option("--tasks", default="", help="Limit of tasks (TasksMax=)."),
        click.option("--user", "-u", default="", help="user[:group] or uid[:gid] from the image."),
        click.option("--workdir", "-w", default="", help="Working directory inside."),
        click.option("--hostname", default="", help="Hostname inside (default: from the unit name)."),
        click.option("--network", type=click.Choice(["host", "none"]), default=None,
                     help="host (default): the machine's network; none: loopback only."),
        click.option("--stop-timeout", default="", help="Seconds from the stop signal to SIGKILL (default 10)."),
        click.option("--privileged", is_flag=True, help="All capabilities, no seccomp/NoNewPrivileges hardening."),
        click.option("--restart", type=click.Choice(["no", "on-failure", "always"]), default="no", show_default=True,
                     help="systemd Restart= of the unit."),
    ]
    for decorate in reversed(decorators):
        fn = decorate(fn)
    return fn


def options_from(params: dict[str, Any], command: Sequence[str]) -> ContainerOptions:
    return ContainerOptions(
        image=params["image"], command=tuple(command), runtime=params["runtime"], ports=tuple(params["ports"]),
        env=tuple(params["env"]), binds=tuple(params["binds"]), memory=params["memory"], cpus=params["cpus"],
        tasks=params["tasks"], user=params["user"], workdir=params["workdir"], hostname=params["hostname"],
        network=params["network"] or "", stop_timeout=params["stop_timeout"], privileged=params["privileged"],
        restart=params["restart"])


def base_name(name: str) -> str:
    base = name[:-len(".service")] if name.endswith(".service") else name
    if not base or "." in base or "@" in base or "/" in base:
        raise CommandFailed(f"invalid name {name!r}: give a plain name such as web (fleetctl run adds .service, "
                            "and @1..N with --count)")
    parse_unit_name(f"{base}.service")
    return base


# ---------------------------------------------------------------------------- pods


@click.command("container", context_settings={"help_option_names": []})
@click.argument("name")
@container_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def _container_spec_command(name, command, **params):  # parsed only, never invoked
    pass


def parse_container_arg(text: str) -> tuple[str, ContainerOptions]:
    """One run-pod --container: 'NAME --image IMAGE [options] -- CMD ARGS...'."""
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise CommandFailed(f"--container {text!r}: {exc}") from None
    try:
        ctx = _container_spec_command.make_context("--container", argv)
    except click.ClickException as exc:
        raise CommandFailed(f"--container {text!r}: {exc.format_message()}") from None
    params = dict(ctx.params)
    name = params.pop("name")
    command = params.pop("command")
    return name, options_from(params, command)


def pod_units(pod: str, containers: Sequence[tuple[str, ContainerOptions]], *, conflicts: Sequence[str] = (),
              metadata: Sequence[str] = ()) -> list[tuple[str, UnitFile]]:
    """The units of a pod: POD-<main>.service, and each helper POD-<name>.service bound to it."""
    if not containers:
        raise CommandFailed("a pod needs at least one --container (the first one is the main container)")
    names = [f"{pod}-{base_name(n)}.service" for n, _ in containers]
    if len(set(names)) != len(names):
        raise CommandFailed(f"pod {pod}: container names must be distinct")
    main = names[0]
    fleet_main = [("Conflicts", c) for c in conflicts] + [("MachineMetadata", m) for m in metadata]
    units = [(main, compose_unit(main, containers[0][1], description=f"pod {pod}: main container {containers[0][0]}",
                                 fleet_options=fleet_main))]
    for name, (short, opts) in zip(names[1:], containers[1:]):
        units.append((name, compose_unit(
            name, opts, description=f"pod {pod}: helper {short} of {main}",
            unit_options=[("BindsTo", main), ("After", main)],
            fleet_options=[("MachineOf", main)])))
    return units
