"""fleetctl's container commands: run, run-pod, images, image import; `cat --rendered`.

    fleetctl run NAME --image IMAGE [--runtime nspawn|launcher] [--port P] [--env K=V]
                 [--memory 256M] [--cpus 0.5] [--global] [--conflicts GLOB] [--count N] -- CMD...
    fleetctl run-pod POD --container 'NAME --image IMAGE [options] -- CMD...' --container ...
    fleetctl images
    fleetctl image import FILE [--name N] [--machine M]

`run` composes container units (an [X-Container] section, see fleetd/container/spec.py),
NAME.service or NAME@1..N.service with --count, submits and starts them, and waits until each
runs or fails. `run-pod` does the same for a pod: the first container is the main one, the
others are its helpers (POD-<name>.service, each with MachineOf= and BindsTo=/After= the main
unit: co-scheduled on its machine, stopped with it). `images` lists the images per machine
(from P/images/ in etcd, or from each machine's image server with the API driver). `image
import` asks a machine's fleetd to import an archive: fleetctl serves the file over HTTP for
the time of the import and the machine downloads it (etcd driver).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import shlex
import socket
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import click

from fleetctl import output
from fleetctl.cli import (
    CommandFailed,
    Globals,
    Resolved,
    check_unit,
    cli,
    create_resolved,
    run,
)
from fleetctl.client import FleetClient
from fleetd.container.spec import DEFAULT_RUNTIME, RUNTIMES, container_spec, is_container_unit
from fleetd.errors import FleetError
from fleetd.model import DesiredState, Machine
from fleetd.unit.file import UnitFile
from fleetd.unit.name import parse_unit_name

DEFAULT_IMAGE_PORT = 7380
IMAGES_API = "/fleet/images/v1/images"
POLL = 0.25


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


def _options_from(params: dict[str, Any], command: Sequence[str]) -> ContainerOptions:
    return ContainerOptions(
        image=params["image"], command=tuple(command), runtime=params["runtime"], ports=tuple(params["ports"]),
        env=tuple(params["env"]), binds=tuple(params["binds"]), memory=params["memory"], cpus=params["cpus"],
        tasks=params["tasks"], user=params["user"], workdir=params["workdir"], hostname=params["hostname"],
        network=params["network"] or "", stop_timeout=params["stop_timeout"], privileged=params["privileged"],
        restart=params["restart"])


def _base_name(name: str) -> str:
    base = name[:-len(".service")] if name.endswith(".service") else name
    if not base or "." in base or "@" in base or "/" in base:
        raise CommandFailed(f"invalid name {name!r}: give a plain name such as web (fleetctl run adds .service, "
                            "and @1..N with --count)")
    parse_unit_name(f"{base}.service")
    return base


# ---------------------------------------------------------------------------- submitting and waiting


async def submit_and_start(g: Globals, units: list[tuple[str, UnitFile]], replace: bool,
                           no_block: bool, block_attempts: int) -> int:
    client = g.client()
    resolved = []
    for name, unit in units:
        existing = await client.unit(name)
        if existing is not None and existing.hash != unit.hash and not replace:
            raise CommandFailed(f"Unit {name} already exists with another body; add --replace to replace it "
                                f"(fleetctl cat {name} shows it)")
        same = existing is not None and existing.hash == unit.hash
        resolved.append(Resolved(name, name, None if same else unit, existing))
    await create_resolved(client, resolved)
    names = [n for n, _ in units]
    infos = {u.name: u for u in await client.units_named(names, exact_machine=False)}
    to_start = [n for n in names if infos[n].desired_state is not DesiredState.LAUNCHED]
    if to_start:
        await client.set_desired_state(to_start, DesiredState.LAUNCHED)
    replaced = {r.name for r in resolved if r.file is not None and r.existing is not None}
    waiting = []
    for name in names:
        if name not in to_start and name not in replaced:
            click.echo(f"Unit {name} already launched (unchanged)")
        elif infos[name].is_global:
            click.echo(f"Triggered global unit {name} start")
        else:
            waiting.append(name)
    if no_block:
        for name in waiting:
            click.echo(f"Triggered unit {name} start")
        return 0
    return await wait_running_or_failed(client, waiting, block_attempts * 0.5 if block_attempts > 0 else None)


async def wait_running_or_failed(client: FleetClient, names: Sequence[str], timeout: float | None) -> int:
    """Wait until every unit is launched, or failed on its machine (then say so); exit status."""
    if not names:
        return 0
    pending = list(names)
    failed: list[str] = []
    machines: dict[str, Machine] = {}

    async def where(machine_id: str) -> str:
        if machine_id not in machines:
            machines.update({m.id: m for m in await client.machines()})
        m = machines.get(machine_id)
        return output.machine_full_legend(m, False) if m is not None else machine_id[:8]

    async def check() -> bool:
        infos = {u.name: u for u in await client.units_named(pending, exact_machine=False)}
        per_unit = await asyncio.gather(*(client.unit_states(n) for n in pending))
        states = {(s.name, s.machine_id): s for found in per_unit for s in found}
        for name in list(pending):
            info = infos.get(name)
            if info is None:
                continue
            if info.current_state == DesiredState.LAUNCHED.value:
                pending.remove(name)
                click.echo(f"Unit {name} launched on {await where(info.machine_id)}")
                continue
            state = states.get((name, info.machine_id))
            if state is not None and state.hash == info.hash and state.active_state == "failed":
                pending.remove(name)
                failed.append(name)
                click.echo(f"Unit {name} failed on {await where(info.machine_id)} "
                           f"(fleetctl status {name} / fleetctl journal {name} show why)", err=True)
        return not pending

    if not await client.wait(check, timeout):
        for name in pending:
            click.echo(f"Error waiting for units: timed out waiting for unit {name} to report state launched",
                       err=True)
        return 1
    return 1 if failed else 0


def blocking(fn):
    fn = click.option("--no-block", is_flag=True, help="Do not wait for the units to run.")(fn)
    fn = click.option("--block-attempts", default=0, show_default=True, type=int,
                      help="Wait at most N attempts (0.5 s each); 0 waits until each unit runs or fails.")(fn)
    fn = click.option("--replace", is_flag=True, help="Replace units of the same name that have another body.")(fn)
    return fn


# ---------------------------------------------------------------------------- run


@cli.command("run")
@click.argument("name")
@container_options
@click.option("--count", default=1, show_default=True, type=click.IntRange(1, 1000),
              help="Run N instances NAME@1..N.service (with --port, they conflict with each other).")
@click.option("--global", "is_global", is_flag=True, help="Run on every machine (Global=true).")
@click.option("--conflicts", multiple=True, metavar="GLOB", help="Never on a machine with a unit matching GLOB.")
@click.option("--machine-of", multiple=True, metavar="UNIT", help="On the machine of UNIT (MachineOf=).")
@click.option("--metadata", multiple=True, metavar="K=V", help="Only on machines with this metadata.")
@click.option("--print", "print_only", is_flag=True, help="Print the unit(s) instead of submitting them.")
@blocking
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@run
async def run_command(g: Globals, name: str, count: int, is_global: bool, conflicts, machine_of, metadata,
                      print_only: bool, replace: bool, no_block: bool, block_attempts: int,
                      command: tuple[str, ...], **params) -> int:
    """Run a container in the cluster: compose its unit(s), submit and start them.

    \b
    fleetctl run web --image busybox --port 8080 --count 3 -- httpd -f -p 8080 -h /www
    fleetctl run agent --image busybox --global -- sh -c 'while sleep 5; do date; done'

    The unit is NAME.service (NAME@1..N.service with --count N), with an [X-Container]
    section that the machine renders into a plain systemd unit (fleetctl cat shows the
    declared unit, fleetctl cat --rendered the rendered one). Waits until every unit runs,
    or fails on its machine (exit status 1), unless --no-block.
    """
    base = _base_name(name)
    if is_global and count > 1:
        raise CommandFailed("--global and --count cannot be combined (a global unit runs once per machine)")
    opts = _options_from(params, command)
    names = [f"{base}.service"] if count == 1 else [f"{base}@{i}.service" for i in range(1, count + 1)]
    fleet: list[tuple[str, str]] = []
    if is_global:
        fleet.append(("Global", "true"))
    globs = list(conflicts)
    if count > 1 and opts.ports:
        globs.append(f"{base}@*.service")  # one machine cannot give the same port twice
    fleet += [("Conflicts", g_) for g_ in dict.fromkeys(globs)]
    fleet += [("MachineOf", m) for m in machine_of]
    fleet += [("MachineMetadata", m) for m in metadata]
    units = [(n, compose_unit(n, opts, fleet_options=fleet)) for n in names]
    if print_only:
        for i, (n, unit) in enumerate(units):
            click.echo(("\n" if i else "") + f"# {n}\n" + unit.serialize(), nl=False)
        return 0
    return await submit_and_start(g, units, replace, no_block, block_attempts)


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
    return name, _options_from(params, command)


def pod_units(pod: str, containers: Sequence[tuple[str, ContainerOptions]], *, conflicts: Sequence[str] = (),
              metadata: Sequence[str] = ()) -> list[tuple[str, UnitFile]]:
    """The units of a pod: POD-<main>.service, and each helper POD-<name>.service bound to it."""
    if not containers:
        raise CommandFailed("a pod needs at least one --container (the first one is the main container)")
    names = [f"{pod}-{_base_name(n)}.service" for n, _ in containers]
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


@cli.command("run-pod")
@click.argument("pod")
@click.option("--container", "-c", "containers", multiple=True, required=True, metavar="'NAME --image I [...] -- CMD'",
              help="A container of the pod, with the options of `fleetctl run`; the first is the main one.")
@click.option("--conflicts", multiple=True, metavar="GLOB", help="The pod never runs next to a unit matching GLOB.")
@click.option("--metadata", multiple=True, metavar="K=V", help="Only on machines with this metadata.")
@click.option("--print", "print_only", is_flag=True, help="Print the units instead of submitting them.")
@blocking
@run
async def run_pod(g: Globals, pod: str, containers: tuple[str, ...], conflicts, metadata, print_only: bool,
                  replace: bool, no_block: bool, block_attempts: int) -> int:
    """Run a pod: a main container and its helpers, on one machine, stopping together.

    \b
    fleetctl run-pod shop \\
        -c 'web --image busybox --port 8080 -- httpd -f -p 8080 -h /www' \\
        -c 'log --image busybox -- sh -c "while sleep 5; do date; done"'

    Units: shop-web.service (main) and shop-log.service, which has MachineOf=, BindsTo= and
    After=shop-web.service: it is scheduled on the main unit's machine, starts after it and is
    stopped when it stops (fleetctl stop shop-web.service stops the pod). Destroy a pod with
    fleetctl destroy shop-web.service shop-log.service.
    """
    base = _base_name(pod)
    units = pod_units(base, [parse_container_arg(c) for c in containers], conflicts=conflicts, metadata=metadata)
    if print_only:
        for i, (n, unit) in enumerate(units):
            click.echo(("\n" if i else "") + f"# {n}\n" + unit.serialize(), nl=False)
        return 0
    return await submit_and_start(g, units, replace, no_block, block_attempts)


# ---------------------------------------------------------------------------- images


async def machine_records(g: Globals, image_port: int) -> list:
    """Every machine's image record: from etcd (etcd driver) or from its image server (API)."""
    from fleetd.registry.images import ImageDirectory, MachineImages

    client = g.client()
    if g.driver_name == "etcd":
        return await ImageDirectory(await client._reg()).list()
    import aiohttp

    records = []
    timeout = aiohttp.ClientTimeout(total=max(g.request_timeout, 1.0))
    ssl_ctx = None
    if g.cert_file:  # image servers of a cluster with a PKI ask for a cluster certificate (issue 17)
        from fleetd.api.listeners import client_ssl_context

        ssl_ctx = client_ssl_context(g.ca_file, g.cert_file, g.key_file)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for machine in await client.machines():
            if not machine.public_ip:
                continue
            url = f"{'https' if ssl_ctx else 'http'}://{machine.public_ip}:{image_port}{IMAGES_API}"
            try:
                async with session.get(url, ssl=ssl_ctx if ssl_ctx else True) as response:
                    data = await response.json()
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                click.echo(f"WARNING: machine {machine.id[:8]}: no image list from {url}: {exc or type(exc).__name__}",
                           err=True)
                continue
            data["machineID"] = machine.id
            records.append(MachineImages.from_json(data))
    return records


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return str(n)


@cli.command("images")
@click.option("--full", is_flag=True, help="Full machine IDs and digests.")
@click.option("--no-legend", is_flag=True, help="Do not print a legend (column headers).")
@click.option("--output", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--image-port", default=DEFAULT_IMAGE_PORT, show_default=True, type=int,
              help="Port of the machines' image servers (API driver).")
@run
async def images_command(g: Globals, full: bool, no_legend: bool, output_format: str, image_port: int) -> int:
    """List the images each machine holds (one line per machine and image)."""
    records = await machine_records(g, image_port)
    if output_format == "json":
        click.echo(json.dumps([r.to_json() for r in records], indent=2))
        return 0
    machines = {m.id: m for m in await g.client().machines()}
    rows = []
    for record in records:
        m = machines.get(record.machine_id)
        where = output.machine_full_legend(m, full) if m is not None else (
            record.machine_id if full else record.machine_id[:8] + "...")
        for image in record.images:
            digest = image.digest if full else image.digest.split(":", 1)[1][:12]
            rows.append([where, digest, ",".join(image.names) or "-", _size(image.size)])
    lines = [] if no_legend else ["MACHINE\tIMAGE\tNAMES\tSIZE"]
    lines += ["\t".join(r) for r in rows]
    if lines:
        click.echo("\n".join(lines))
    return 0


@cli.group("image")
def image_group() -> None:
    """Manage images on the machines (import)."""


def _route_source(ip: str) -> str:
    """The local address the kernel would use to reach `ip` (nothing is sent)."""
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((ip, 9))
        return probe.getsockname()[0]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


async def _local_machine_id(client: FleetClient) -> str:
    try:
        mine = Path("/etc/machine-id").read_text().strip()
    except OSError:
        return ""
    return mine if any(m.id == mine for m in await client.machines()) else ""


@image_group.command("import")
@click.argument("path", type=click.Path(exists=True))
@click.option("--name", default="", help="Name the image (default: none; refer to it by digest).")
@click.option("--machine", "machines", multiple=True,
              help="Machine ID (or unique prefix) to import on; repeatable (default: this machine).")
@click.option("--timeout", default=300.0, show_default=True, type=float, help="Seconds to wait for each import.")
@run
async def image_import(g: Globals, path: str, name: str, machines: tuple[str, ...], timeout: float) -> int:
    """Import an image archive on machines: a rootfs tarball (.tar/.tar.gz/...), an OCI image
    layout or `docker save` archive (tar), or a directory (rootfs or OCI layout).

    fleetctl serves the file over HTTP on the address that routes to the machine, writes an
    import request into etcd, and the machine's fleetd downloads, checks and imports it
    (etcd driver). The machine then publishes the image; others fetch it from there.
    """
    from fleetd.images.store import validate_name
    from fleetd.registry.images import ImageDirectory

    if name:
        try:
            validate_name(name)
        except FleetError as exc:
            raise CommandFailed(f"Error: {exc}") from None
    if g.driver_name != "etcd":
        raise CommandFailed("fleetctl image import needs the etcd driver (--driver=etcd --endpoint=<etcd URL>)")
    client = g.client()
    known = await client.machines()
    targets: list[Machine] = []
    for prefix in machines or [await _local_machine_id(client)]:
        if not prefix:
            raise CommandFailed("this host is not a fleet machine: give --machine MACHINE_ID")
        found = [m for m in known if m.id.startswith(prefix)]
        if len(found) != 1:
            raise CommandFailed(f"--machine {prefix}: matches {len(found)} machines (expected exactly one)")
        targets.append(found[0])
    directory = ImageDirectory(await client._reg())
    with tempfile.TemporaryDirectory(prefix="fleetctl-import-") as tmp:
        source = Path(path)
        if source.is_dir():
            archive = Path(tmp) / "image.tar"
            await asyncio.to_thread(_tar_directory, source, archive)
        else:
            archive = source
        digest = await asyncio.to_thread(_sha256, archive)
        status = 0
        for machine in targets:
            status |= await _import_on(directory, machine, archive, digest, name, timeout)
        return status


def _tar_directory(source: Path, archive: Path) -> None:
    with tarfile.open(archive, "w") as tar:
        tar.add(source, arcname=".")


async def _import_on(directory, machine: Machine, archive: Path, sha256: str, name: str, timeout: float) -> int:
    from aiohttp import web

    if not machine.public_ip:
        raise CommandFailed(f"machine {machine.id[:8]} has no public IP to download from us")
    host = _route_source(machine.public_ip)
    token = secrets.token_urlsafe(16)

    async def serve(request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != token:
            raise web.HTTPNotFound()
        return web.FileResponse(archive)

    app = web.Application()
    app.router.add_get("/{token}/image", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/{token}/image"
    request = await directory.request_import(machine.id, url, sha256, name)
    started = time.monotonic()
    try:
        while True:
            answer = await directory.import_request(machine.id, request.id)
            if answer is not None and answer.state != "pending":
                break
            if time.monotonic() - started > timeout:
                click.echo(f"Error: machine {machine.id[:8]} did not import {archive.name} within {timeout:g}s "
                           "(is its fleetd running?)", err=True)
                return 1
            await asyncio.sleep(POLL)
    finally:
        await directory.delete_import(machine.id, request.id)
        await runner.cleanup()
    if answer.state != "done":
        click.echo(f"Error: machine {machine.id[:8]}: import failed: {answer.error}", err=True)
        return 1
    click.echo(f"Imported {archive.name if archive.name != 'image.tar' else 'directory'} on {machine.id[:8]}"
               + (f" as {name}" if name else "") + f": {answer.digest}")
    return 0


# ---------------------------------------------------------------------------- cat --rendered


async def rendered_text(g: Globals, name: str, machine: str = "", image_port: int = DEFAULT_IMAGE_PORT) -> str:
    """What the unit's machine writes to disk for `name`, rendered here with the same pure
    function (fleetd/container/render.py) from the machine's published facts and images."""
    from fleetd.container.render import CannotRun, ImageInfo, NodeFacts, render_or_explain
    from fleetd.images.store import ImageStore

    client = g.client()
    info = await client.unit(name)
    if info is None:
        raise CommandFailed(f"Unit {name} not found")
    if not is_container_unit(info.file):
        return info.file.serialize()  # plain units are written as they are stored
    known = await client.machines()
    if machine:
        found = [m.id for m in known if m.id.startswith(machine)]
        if len(found) != 1:
            raise CommandFailed(f"--machine {machine}: matches {len(found)} machines (expected exactly one)")
        target = found[0]
    elif info.machine_id:
        target = info.machine_id
    elif info.is_global:
        raise CommandFailed(f"Unit {name} is global: give --machine to see what one machine renders")
    else:
        raise CommandFailed(f"Unit {name} is not scheduled to a machine yet (its rendering depends on the machine)")
    records = {r.machine_id: r for r in await machine_records(g, image_port)}
    record = records.get(target)
    if record is None:
        raise CommandFailed(f"machine {target[:8]} publishes no image record (is its fleetd running?)")
    facts = NodeFacts.from_json(record.facts)
    try:
        spec = container_spec(info.file, name)
    except FleetError:
        return render_or_explain(name, info.file, facts, None)
    local = record.find(spec.image)
    if local:
        img = local[0]
        rootfs = img.rootfs
    else:
        elsewhere = [i for r in records.values() for i in r.find(spec.image)]
        if not elsewhere:
            return render_or_explain(name, info.file, facts, CannotRun(
                f'image "{spec.image}" not found on this machine ({target[:8]}) nor on any other machine '
                "(see fleetctl images; import it with fleetctl image import)"))
        img = elsewhere[0]
        rootfs = str(ImageStore(facts.images_dir).rootfs_path(img.digest))
        click.echo(f"# note: {target[:8]} has no image {spec.image} yet; it fetches {img.digest[:19]} "
                   "before loading the unit (shown as it will be)", err=True)
    cfg = img.config or {}
    image = ImageInfo(ref=spec.image, digest=img.digest, rootfs=rootfs, env=tuple(cfg.get("env") or ()),
                      entrypoint=tuple(cfg.get("entrypoint") or ()), cmd=tuple(cfg.get("cmd") or ()),
                      workdir=str(cfg.get("workdir") or ""), user=str(cfg.get("user") or ""))
    return render_or_explain(name, info.file, facts, image)

