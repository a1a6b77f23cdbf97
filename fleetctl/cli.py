"""fleetctl: fleet's command-line interface (click), thin over fleetctl.client."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

import click

from fleetd import __version__
from fleetd.config import DEFAULT_KEY_PREFIX, EtcdSettings
from fleetd.errors import FleetError, UnitError
from fleetd.model import DesiredState, Machine, Unit
from fleetd.unit.file import UnitFile
from fleetd.unit.name import mangle_unit_name, parse_unit_name
from fleetd.unit.requirements import validate_unit
from fleetctl import output
from fleetctl.client import EtcdFleetClient, FleetClient, UnitInfo
from fleetctl.progress import Progress
from fleetctl.ssh import DEFAULT_KNOWN_HOSTS, SshOptions, SshTunnel, run_here_or_there, ssh_argv
from fleetd.jobstate import ACTIVE_STATES

DEFAULT_ENDPOINT = "unix:///var/run/fleet.sock"
DEFAULT_ETCD_ENDPOINT = "http://127.0.0.1:2379"
SECONDS_PER_ATTEMPT = 0.5  # fleetctl's checkUnitState sleeps 500 ms between attempts


class CommandFailed(Exception):
    """Print `message` on stderr (one line) and exit with `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


@dataclass
class Globals:
    endpoint: str
    driver: str
    etcd_key_prefix: str
    request_timeout: float
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    debug: bool
    ssh: SshOptions = field(default_factory=SshOptions)
    _client: FleetClient | None = field(default=None, repr=False)
    _tunnel: SshTunnel | None = field(default=None, repr=False)

    def client(self) -> FleetClient:
        if self._client is None:
            self._client = make_client(self)
        return self._client

    @property
    def driver_name(self) -> str:
        return choose_driver(self.endpoint, self.driver)

    def close_tunnel(self) -> None:
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None


def choose_driver(endpoint: str, driver: str) -> str:
    """fleet's rule: an explicit driver wins; otherwise etcd for ports 2379/4001, else the API."""
    if driver:
        return driver.lower()
    first = endpoint.split(",")[0]
    try:
        port = urlsplit(first if "://" in first else f"http://{first}").port
    except ValueError:
        port = None
    return "etcd" if port in (2379, 4001) else "api"


def _tunnelled(g: Globals, target: tuple) -> str:
    """Start the --tunnel SSH forward to `target`; returns the local address to use instead."""
    g._tunnel = SshTunnel(g.ssh, target)
    return g._tunnel.start()


def make_client(g: Globals) -> FleetClient:
    driver = choose_driver(g.endpoint, g.driver)
    if driver == "etcd":
        endpoint = DEFAULT_ETCD_ENDPOINT if g.endpoint == DEFAULT_ENDPOINT else g.endpoint
        if g.ssh.tunnel:
            first = endpoint.split(",")[0].strip()
            url = urlsplit(first if "://" in first else f"http://{first}")
            local = _tunnelled(g, ("tcp", url.hostname or "127.0.0.1", url.port or 2379))
            endpoint = f"{url.scheme}://{local}"
        settings = EtcdSettings(
            endpoints=tuple(e.strip() for e in endpoint.split(",") if e.strip()),
            key_prefix=g.etcd_key_prefix,
            cafile=g.ca_file,
            certfile=g.cert_file,
            keyfile=g.key_file,
            request_timeout=g.request_timeout,
        )
        return EtcdFleetClient(settings)
    if driver == "api":
        try:
            from fleetctl.api_client import ApiFleetClient
        except ImportError:
            raise CommandFailed("the API driver is not available in this build; use --driver=etcd") from None
        if "," in g.endpoint.strip(","):
            click.echo(f"WARNING: the API driver uses only the first endpoint of {g.endpoint}", err=True)
        endpoint = g.endpoint
        if g.ssh.tunnel:
            from fleetctl.api_client import parse_endpoint

            ep = parse_endpoint(endpoint)
            if ep.unix_path is not None:
                endpoint = "unix://" + _tunnelled(g, ("unix", ep.unix_path))
            else:
                url = urlsplit(ep.base_url)
                local = _tunnelled(g, ("tcp", url.hostname, url.port or (443 if url.scheme == "https" else 80)))
                endpoint = f"{url.scheme}://{local}"
        return ApiFleetClient(endpoint, timeout=g.request_timeout, cafile=g.ca_file, certfile=g.cert_file, keyfile=g.key_file)
    raise CommandFailed(f"unknown driver {driver!r} (expected api or etcd)")


def run(coro_fn: Callable[..., Awaitable[int | None]]) -> Callable[..., None]:
    """Run an async command body with the client, mapping errors to one line and an exit code."""

    @functools.wraps(coro_fn)
    def wrapper(*args, **kwargs) -> None:
        g: Globals = click.get_current_context().obj

        async def main() -> int | None:
            try:
                return await coro_fn(g, *args, **kwargs)
            finally:
                if g._client is not None:
                    await g._client.close()
                g.close_tunnel()

        try:
            code = asyncio.run(main())
        except CommandFailed as exc:
            click.echo(str(exc), err=True)
            sys.exit(exc.code)
        except FleetError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            sys.exit(130)
        sys.exit(code or 0)

    return wrapper


# modules that add commands to `cli` when imported: imported only when a command is not one of
# the core ones (or all are listed), so that `fleetctl start` does not pay for them
LAZY_COMMAND_MODULES = ("fleetctl.containers", "fleetctl.commands_pki")  # run, run-pod, images, image import; pki


class PrefixGroup(click.Group):
    """Commands may be abbreviated to any unique prefix, as in fleet's CLI (cobra)."""

    def _load_lazy_commands(self) -> None:
        import importlib

        for module in LAZY_COMMAND_MODULES:
            importlib.import_module(module)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_lazy_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        self._load_lazy_commands()
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        matches = [c for c in self.list_commands(ctx) if c.startswith(name)]
        if len(matches) == 1:
            return super().get_command(ctx, matches[0])
        if len(matches) > 1:
            ctx.fail(f"ambiguous command {name!r}: could be {', '.join(sorted(matches))}")
        return None

    def resolve_command(self, ctx, args):
        _, command, rest = super().resolve_command(ctx, args)
        return command.name if command else None, command, rest


CONTEXT = {"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "FLEETCTL", "max_content_width": 100}


@click.group(cls=PrefixGroup, context_settings=CONTEXT, invoke_without_command=True)
@click.option("--endpoint", default=DEFAULT_ENDPOINT, show_default=True,
              help="fleet API endpoint (unix:///path or http(s)://host:port); with --driver=etcd, comma-separated etcd URLs.")
@click.option("--driver", default="", help="API or etcd. Default: etcd if the endpoint port is 2379 or 4001, else API.")
@click.option("--etcd-key-prefix", default=DEFAULT_KEY_PREFIX, show_default=True, help="Key prefix in etcd (etcd driver).")
@click.option("--request-timeout", default=3.0, show_default=True, type=float, help="Seconds to wait for a response.")
@click.option("--ca-file", default=None, help="CA certificate for TLS to the API or etcd.")
@click.option("--cert-file", default=None, help="Client certificate for TLS.")
@click.option("--key-file", default=None, help="Client key for TLS.")
@click.option("--etcd-cafile", "ca_file_old", default=None, hidden=True)
@click.option("--etcd-certfile", "cert_file_old", default=None, hidden=True)
@click.option("--etcd-keyfile", "key_file_old", default=None, hidden=True)
@click.option("--tunnel", default="", help="SSH bastion host[:port] to reach the endpoint through.")
@click.option("--ssh-username", default="core", show_default=True, help="User for --tunnel and ssh.")
@click.option("--ssh-timeout", default=10.0, show_default=True, type=float,
              help="Seconds to wait for an SSH connection to come up.")
@click.option("--strict-host-key-checking", type=click.BOOL, default=True, show_default=True,
              help="Verify host keys of remote machines against --known-hosts-file.")
@click.option("--known-hosts-file", default=DEFAULT_KNOWN_HOSTS, show_default=True,
              help="File with the host keys of remote machines (with strict host key checking).")
@click.option("--debug", is_flag=True, help="Print debug information on stderr.")
@click.option("--version", "-v", "show_version", is_flag=True, help="Print the version and exit.")
@click.pass_context
def cli(ctx: click.Context, endpoint, driver, etcd_key_prefix, request_timeout, ca_file, cert_file, key_file,
        ca_file_old, cert_file_old, key_file_old, tunnel, ssh_username, ssh_timeout, strict_host_key_checking,
        known_hosts_file, debug, show_version) -> None:
    """fleetctl: control a fleet cluster of systemd machines.

    The default driver is the fleet API (--endpoint unix:///var/run/fleet.sock, or
    http(s)://host:port of a fleetd's TCP API); --driver=etcd, or an endpoint on port
    2379/4001, talks to etcd directly. Every global flag can also come from the
    environment as FLEETCTL_<FLAG> (e.g. FLEETCTL_ENDPOINT, FLEETCTL_DRIVER).

    \b
    Exit status:
      0    success
      1    an error (one line on stderr), e.g. unknown unit, unreachable API
      2    usage error, or a deprecated command/flag (verify, --sign)
      N    ssh: the remote command's exit status
      130  interrupted (Ctrl-C)

    Shell completion: eval "$(fleetctl completion bash)" (or zsh, fish).
    """
    if show_version:
        click.echo(f"fleetctl version {__version__}")
        ctx.exit(0)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        ctx.exit(0)
    # errors reach the user as one line through the command; library logs only with --debug
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if debug else logging.CRITICAL,
                        format="fleetctl: %(name)s: %(message)s")
    ctx.obj = Globals(
        endpoint=endpoint,
        driver=driver,
        etcd_key_prefix=etcd_key_prefix,
        request_timeout=request_timeout,
        ca_file=ca_file or ca_file_old,
        cert_file=cert_file or cert_file_old,
        key_file=key_file or key_file_old,
        debug=debug,
        ssh=SshOptions(ssh_username, ssh_timeout, strict_host_key_checking, known_hosts_file, tunnel),
    )


# ---------------------------------------------------------------------------- unit resolution


@dataclass(frozen=True)
class Resolved:
    name: str
    arg: str
    file: UnitFile | None  # None: already in the registry and not replaced
    existing: UnitInfo | None


def read_unit_file(path: str) -> UnitFile:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CommandFailed(f"Error reading unit file {path}: {exc.strerror}") from None
    return UnitFile.parse(data, source=path)


def check_unit(name: str, file: UnitFile) -> None:
    """Client-side validation as fleet's createUnit does (name rules and [X-Fleet] options)."""
    parse_unit_name(name)
    requirements = validate_unit(file, name)
    for key in requirements.unknown_options:
        click.echo(f"WARNING: unit {name}: unknown option {key} in [X-Fleet]", err=True)


async def resolve_units(client: FleetClient, args: Sequence[str], replace: bool) -> list[Resolved]:
    """fleet's lazyCreateUnits resolution, done for all arguments before anything is written:
    (1) the registry, (2) a local file, (3) the template in the registry, (4) the template on disk."""
    resolved: list[Resolved] = []
    for arg in args:
        name = mangle_unit_name(arg)
        try:
            parse_unit_name(name)
        except UnitError as exc:
            raise CommandFailed(f"Error creating units: {exc}") from None
        existing = await client.unit(name)
        local = Path(arg)
        if existing is not None:
            if local.exists():
                file = read_unit_file(arg)
                if file.hash != existing.hash:
                    if replace:
                        check_unit(name, file)
                        resolved.append(Resolved(name, arg, file, existing))
                        continue
                    click.echo(f"WARNING: Unit {name} in registry differs from local unit file {arg}. "
                               "Add --replace to override.", err=True)
            resolved.append(Resolved(name, arg, None, existing))
            continue
        if local.exists():
            file = read_unit_file(arg)
        else:
            info = parse_unit_name(name)
            if not info.is_instance:
                raise CommandFailed(f"Error creating units: unable to find unit {name} in the registry or on the filesystem ({arg})")
            template = await client.unit(info.template)
            if template is not None:
                file = template.file
            else:
                template_path = local.parent / info.template
                if not template_path.exists():
                    raise CommandFailed(
                        f"Error creating units: unable to find unit {name} or template {info.template} "
                        "in the registry or on the filesystem"
                    )
                file = read_unit_file(str(template_path))
        check_unit(name, file)
        resolved.append(Resolved(name, arg, file, None))
    return resolved


async def create_resolved(client: FleetClient, resolved: Sequence[Resolved]) -> None:
    new = [Unit(r.name, r.file) for r in resolved if r.file is not None and r.existing is None]
    if new:
        await client.create_units(new)
    for r in resolved:
        if r.file is not None and r.existing is not None:
            await client.replace_unit(Unit(r.name, r.file, r.existing.desired_state))


def unit_names(args: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(mangle_unit_name(a) for a in args))


# ---------------------------------------------------------------------------- waiting


def block_timeout(no_block: bool, block_attempts: int) -> float | None:
    return None if block_attempts <= 0 else block_attempts * SECONDS_PER_ATTEMPT


async def wait_for_states(client: FleetClient, names: Sequence[str], state: DesiredState, action: str,
                          no_block: bool, block_attempts: int) -> int:
    """fleet's tryWaitForUnitStates: print `Unit X <state> on <machine>` as each unit gets there."""
    if not names:
        return 0
    if no_block:
        for name in names:
            click.echo(f"Triggered unit {name} {action}")
        return 0
    pending = list(names)
    machines: dict[str, Machine] = {}
    progress = Progress(len(pending), state.value)

    async def check() -> bool:
        infos = {u.name: u for u in await client.units_named(pending, exact_machine=False)}
        for name in list(pending):
            info = infos.get(name)
            reached = info is not None and info.current_state == state.value
            if state is DesiredState.INACTIVE and info is None:
                reached = True
            elif reached and state is DesiredState.INACTIVE and not info.is_global:
                # "inactive" as soon as the engine took the placement away: wait until its
                # agent has unloaded it too (the state record goes with it), so that the unit
                # is gone from systemd when `fleetctl unload` returns
                reached = not await client.unit_states(name)
            if reached:
                pending.remove(name)
                message = f"Unit {name} {state.value}"
                if info is not None and info.machine_id:
                    if info.machine_id not in machines:
                        machines.update({m.id: m for m in await client.machines()})
                    m = machines.get(info.machine_id)
                    if m is not None:
                        message += f" on {output.machine_full_legend(m, False)}"
                progress.clear()
                click.echo(message)
        if pending:
            progress.update(len(names) - len(pending))
        return not pending

    try:
        reached_all = await client.wait(check, block_timeout(no_block, block_attempts))
    finally:
        progress.clear()
    if reached_all:
        return 0
    for name in pending:
        click.echo(f"Error waiting for units: timed out waiting for unit {name} to report state {state.value}", err=True)
    return 1


def blocking_options(fn):
    fn = click.option("--no-block", is_flag=True, help="Do not wait for the units to reach the state.")(fn)
    fn = click.option("--block-attempts", default=0, show_default=True, type=int,
                      help="Wait at most N attempts (0.5 s each); 0 waits forever.")(fn)
    return fn


def sign_option(fn):
    return click.option("--sign", is_flag=True, hidden=True, help="DEPRECATED - this option cannot be used")(fn)


def deprecated_sign() -> None:
    raise CommandFailed("WARNING: The signed/verified units feature is DEPRECATED and cannot be used.", code=2)


# ---------------------------------------------------------------------------- commands


@cli.command()
@click.option("--replace", is_flag=True, help="Replace units in the registry that differ from the local files.")
@sign_option
@click.argument("units", nargs=-1)
@run
async def submit(g: Globals, replace: bool, sign: bool, units: tuple[str, ...]) -> int:
    """Upload one or more unit files to the cluster without starting them."""
    if sign:
        deprecated_sign()
    if not units:
        click.echo("No units given", err=True)
        return 0
    client = g.client()
    await create_resolved(client, await resolve_units(client, units, replace))
    return 0


async def _load_or_start(g: Globals, units, replace, no_block, block_attempts, state: DesiredState, action: str) -> int:
    if not units:
        click.echo("No units given", err=True)
        return 0
    client = g.client()
    resolved = await resolve_units(client, units, replace)
    await create_resolved(client, resolved)
    names = [r.name for r in resolved]
    infos = {u.name: u for u in await client.units_named(names, exact_machine=False)}
    to_change = [n for n in dict.fromkeys(names) if infos[n].desired_state is not state]
    if to_change:
        await client.set_desired_state(to_change, state)
    # a replaced body must come up again too: wait for it even if the state did not change
    replaced = {r.name for r in resolved if r.file is not None and r.existing is not None}
    waiting = []
    for name in dict.fromkeys(names):
        if name not in to_change and name not in replaced:
            continue
        if infos[name].is_global:
            click.echo(f"Triggered global unit {name} {action}")
        else:
            waiting.append(name)
    return await wait_for_states(client, waiting, state, action, no_block, block_attempts)


@cli.command()
@click.option("--replace", is_flag=True, help="Replace the units in the registry if the local files differ.")
@blocking_options
@sign_option
@click.argument("units", nargs=-1)
@run
async def load(g: Globals, replace, no_block, block_attempts, sign, units) -> int:
    """Schedule one or more units in the cluster, first submitting them if necessary."""
    if sign:
        deprecated_sign()
    return await _load_or_start(g, units, replace, no_block, block_attempts, DesiredState.LOADED, "load")


@cli.command()
@click.option("--replace", is_flag=True, help="Replace the units in the registry if the local files differ (restarts them).")
@blocking_options
@sign_option
@click.argument("units", nargs=-1)
@run
async def start(g: Globals, replace, no_block, block_attempts, sign, units) -> int:
    """Start one or more units in the cluster, first submitting and loading them if necessary.

    Blocks until the units are active, unless --no-block; global units never block.
    """
    if sign:
        deprecated_sign()
    return await _load_or_start(g, units, replace, no_block, block_attempts, DesiredState.LAUNCHED, "start")


async def _find(client: FleetClient, args: Sequence[str]) -> list[UnitInfo]:
    """fleet's findUnits: the named units that exist; unknown names are skipped silently."""
    return await client.units_named(unit_names(args))


@cli.command()
@blocking_options
@click.argument("units", nargs=-1)
@run
async def stop(g: Globals, no_block, block_attempts, units) -> int:
    """Stop one or more units in the cluster (they stay loaded)."""
    if not units:
        click.echo("No units given", err=True)
        return 0
    client = g.client()
    found = await _find(client, units)
    stopping, globals_ = [], []
    for u in found:
        if u.is_global:
            if u.desired_state is DesiredState.LAUNCHED:
                globals_.append(u.name)
            continue
        if u.current_state == DesiredState.INACTIVE.value and u.desired_state is DesiredState.INACTIVE:
            raise CommandFailed(f"Unable to stop unit {u.name} in state inactive")
        if u.desired_state is not DesiredState.LOADED:
            stopping.append(u.name)
    if stopping or globals_:
        await client.set_desired_state(stopping + globals_, DesiredState.LOADED)
    for name in globals_:
        click.echo(f"Triggered global unit {name} stop")
    code = await wait_for_states(client, stopping, DesiredState.LOADED, "stop", no_block, block_attempts)
    if code == 0 and stopping and not no_block:
        click.echo(f"Successfully stopped units [{' '.join(stopping)}].", err=True)
    return code


@cli.command()
@blocking_options
@click.argument("units", nargs=-1)
@run
async def unload(g: Globals, no_block, block_attempts, units) -> int:
    """Unload one or more units from the cluster (they stay submitted)."""
    if not units:
        click.echo("No units given", err=True)
        return 0
    client = g.client()
    found = [u for u in await _find(client, units) if u.desired_state is not DesiredState.INACTIVE]
    if found:
        await client.set_desired_state([u.name for u in found], DesiredState.INACTIVE)
    waiting = []
    for u in found:
        if u.is_global:
            click.echo(f"Triggered global unit {u.name} unload")
        else:
            waiting.append(u.name)
    return await wait_for_states(client, waiting, DesiredState.INACTIVE, "unload", no_block, block_attempts)


@cli.command()
@blocking_options
@click.argument("units", nargs=-1)
@run
async def destroy(g: Globals, no_block, block_attempts, units) -> int:
    """Destroy one or more units in the cluster: stop, unload and delete them."""
    if not units:
        click.echo("No units given", err=True)
        return 0
    client = g.client()
    destroyed = await client.destroy_units([u.name for u in await _find(client, units)])
    for name in destroyed:
        click.echo(f"Destroyed {name}")
    return 0


@cli.command()
@click.option("--rendered", is_flag=True,
              help="Print what the unit's machine writes to disk (container units are rendered there).")
@click.option("--machine", default="", help="With --rendered: the machine (ID prefix), e.g. for a global unit.")
@click.argument("unit", nargs=-1)
@run
async def cat(g: Globals, rendered: bool, machine: str, unit: tuple[str, ...]) -> int:
    """Print the unit file of a unit as stored in the cluster (--rendered: as its machine writes it)."""
    if len(unit) != 1:
        raise CommandFailed("One unit file must be provided")
    name = mangle_unit_name(unit[0])
    if rendered:
        from fleetctl.containers import rendered_text

        click.echo(await rendered_text(g, name, machine), nl=False)
        return 0
    info = await g.client().unit(name)
    if info is None:
        raise CommandFailed(f"Unit {name} not found")
    click.echo(info.file.serialize(), nl=False)
    return 0


def list_options(default_fields: str, valid: dict):
    def decorate(fn):
        fn = click.option("--output", "output_format", type=click.Choice(["table", "json"]), default="table",
                          show_default=True, help="Output format (json is beyond fleet).")(fn)
        fn = click.option("--no-legend", is_flag=True, help="Do not print a legend (column headers).")(fn)
        fn = click.option("--full", "-l", is_flag=True, help="Do not ellipsize fields on output.")(fn)
        fn = click.option("--fields", default=default_fields, show_default=True,
                          help=f"Columns to print. Valid fields: {','.join(sorted(valid))}.")(fn)
        return fn
    return decorate


def _print_table(cols: list[str], rows: list[list[str]], no_legend: bool) -> None:
    header = [[c.upper() for c in cols]] if not no_legend else []
    click.echo(output.tabwrite(header + rows), nl=False)


def _fields(spec: str, valid: dict) -> list[str]:
    try:
        cols = output.parse_fields(spec, valid)
    except ValueError as exc:
        raise CommandFailed(str(exc)) from None
    if "tmachine" in cols:
        click.echo('WARNING: The "tmachine" field is deprecated. Use "target" instead', err=True)
    return cols


@cli.command("list-unit-files")
@list_options(output.DEFAULT_UNIT_FILE_FIELDS, output.UNIT_FILE_FIELDS)
@run
async def list_unit_files(g: Globals, fields, full, no_legend, output_format) -> int:
    """List the units that exist in the cluster, whether or not they run."""
    cols = _fields(fields, output.UNIT_FILE_FIELDS)
    client = g.client()
    units = await client.units()
    machines = {m.id: m for m in await client.machines()} if any(u.machine_id for u in units) else {}
    if output_format == "json":
        click.echo(json.dumps([
            {"name": u.name, "hash": u.hash, "desiredState": u.desired_state.value,
             "currentState": u.current_state or None, "machineID": u.machine_id or None, "global": u.is_global}
            for u in units], indent=2))
        return 0
    _print_table(cols, [[output.UNIT_FILE_FIELDS[c](u, full, machines) for c in cols] for u in units], no_legend)
    return 0


@cli.command("list-units")
@list_options(output.DEFAULT_UNIT_FIELDS, output.UNIT_FIELDS)
@run
async def list_units(g: Globals, fields, full, no_legend, output_format) -> int:
    """List the state of units in the cluster, one row per machine running them."""
    cols = _fields(fields, output.UNIT_FIELDS)
    client = g.client()
    states = await client.unit_states()
    machines = {m.id: m for m in await client.machines()}
    if output_format == "json":
        click.echo(json.dumps([
            {"name": s.name, "machineID": s.machine_id, "hash": s.hash, "systemdLoadState": s.load_state,
             "systemdActiveState": s.active_state, "systemdSubState": s.sub_state} for s in states], indent=2))
        return 0
    _print_table(cols, [[output.UNIT_FIELDS[c](s, full, machines) for c in cols] for s in states], no_legend)
    return 0


@cli.command("list-machines")
@list_options(output.DEFAULT_MACHINE_FIELDS, output.MACHINE_FIELDS)
@run
async def list_machines(g: Globals, fields, full, no_legend, output_format) -> int:
    """List the machines in the cluster, with their IP and metadata."""
    cols = _fields(fields, output.MACHINE_FIELDS)
    machines = await g.client().machines()
    if output_format == "json":
        click.echo(json.dumps([
            {"id": m.id, "primaryIP": m.public_ip, "metadata": dict(m.metadata), "cpus": m.capacity.cpu,
             "memory": m.capacity.memory, "draining": m.draining, "version": m.version} for m in machines], indent=2))
        return 0
    _print_table(cols, [[output.MACHINE_FIELDS[c](m, full) for c in cols] for m in machines], no_legend)
    return 0


async def _machine(client: FleetClient, prefix: str) -> Machine:
    matches = [m for m in await client.machines() if m.id.startswith(prefix)]
    if not matches:
        raise CommandFailed(f"Machine {prefix} not found")
    if len(matches) > 1:
        raise CommandFailed(f"Machine ID prefix {prefix} is ambiguous: {', '.join(m.short_id for m in matches)}")
    return matches[0]


@cli.command()
@click.argument("machine")
@run
async def drain(g: Globals, machine: str) -> int:
    """Stop placing units on MACHINE and move its units elsewhere, one by one (beyond fleet)."""
    client = g.client()
    m = await _machine(client, machine)
    await client.set_draining(m.id, True)
    click.echo(f"Machine {m.short_id}... draining")
    return 0


@cli.command()
@click.argument("machine")
@run
async def undrain(g: Globals, machine: str) -> int:
    """Allow placement on a drained MACHINE again (beyond fleet)."""
    client = g.client()
    m = await _machine(client, machine)
    await client.set_draining(m.id, False)
    click.echo(f"Machine {m.short_id}... accepting units")
    return 0


@cli.command("set-metadata")
@click.argument("machine")
@click.argument("pairs", nargs=-1, required=True)
@run
async def set_metadata(g: Globals, machine: str, pairs: tuple[str, ...]) -> int:
    """Set (KEY=VALUE) or delete (KEY=) dynamic metadata of MACHINE (beyond fleet's CLI)."""
    client = g.client()
    m = await _machine(client, machine)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandFailed(f"invalid metadata {pair!r} (expected KEY=VALUE, or KEY= to delete)")
        await client.set_machine_metadata(m.id, key, value or None)
    return 0


@cli.command()
@blocking_options
@click.argument("units", nargs=-1)
@run
async def restart(g: Globals, no_block, block_attempts, units) -> int:
    """Restart one or more units in the cluster: stop them (to loaded), then start them again.

    The stop phase is always waited for (otherwise the agents could miss it); --no-block only
    skips waiting for the start. A global unit is stopped on every machine, then started again.
    """
    if not units:
        click.echo("No units given", err=True)
        return 0
    client = g.client()
    found = await _find(client, units)
    plain = [u.name for u in found if not u.is_global]
    globals_ = [u.name for u in found if u.is_global]
    if not found:
        return 0
    await client.set_desired_state([u.name for u in found], DesiredState.LOADED)
    code = await wait_for_states(client, plain, DesiredState.LOADED, "stop", False, block_attempts)
    if code:
        return code
    if globals_:
        async def globals_stopped() -> bool:
            states = [s for s in await client.unit_states() if s.name in globals_]
            return not any(s.active_state in ACTIVE_STATES for s in states)

        if not await client.wait(globals_stopped, block_timeout(False, block_attempts)):
            raise CommandFailed(f"Error waiting for units: timed out waiting for global units {', '.join(globals_)} to stop")
    await client.set_desired_state([u.name for u in found], DesiredState.LAUNCHED)
    for name in globals_:
        click.echo(f"Triggered global unit {name} restart")
    return await wait_for_states(client, plain, DesiredState.LAUNCHED, "start", no_block, block_attempts)


def _remote_targets(infos: dict[str, UnitInfo], states, name: str, machine: str = "") -> list[tuple[str, str]]:
    """(unit, machine) pairs to run a status/journal on: the target machine, or every machine
    with a state for a global unit (narrowed to --machine if given)."""
    info = infos[name]
    if info.is_global:
        machines = sorted({s.machine_id for s in states if s.name == name})
        if machine:
            machines = [m for m in machines if m.startswith(machine)]
        return [(name, m) for m in machines]
    return [(name, info.machine_id)]


async def _machine_ips(client: FleetClient) -> dict[str, str]:
    return {m.id: m.public_ip for m in await client.machines()}


@cli.command()
@click.option("--ssh-port", default=22, show_default=True, type=int, help="SSH port (etcd driver: status runs over SSH).")
@click.option("--output", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one object per unit and machine with the output and exit status (beyond fleet).")
@click.argument("units", nargs=-1)
@run
async def status(g: Globals, ssh_port: int, output_format: str, units: tuple[str, ...]) -> int:
    """Output the status of one or more units in the cluster (systemctl status on their machine).

    With the API driver the unit's machine runs `systemctl status` for us (relayed by the fleetd
    we talk to); with the etcd driver it runs locally or over SSH, as fleet does. A global unit
    is shown for every machine that runs it. Exits 0 once shown, 1 if a unit does not exist or
    is not loaded.
    """
    client = g.client()
    names = unit_names(units)
    infos = {u.name: u for u in await client.units_named(names)}
    states = await client.unit_states() if any(infos.get(n) and infos[n].is_global for n in names) else []
    targets: list[tuple[str, str]] = []
    for name in names:
        info = infos.get(name)
        if info is None:
            raise CommandFailed(f"Unit {name} does not exist.")
        if not info.is_global and info.current_state == DesiredState.INACTIVE.value:
            raise CommandFailed(f"Unit {name} does not appear to be loaded.")
        found = _remote_targets(infos, states, name)
        if not found:
            raise CommandFailed(f"Unit {name} does not appear to be loaded.")
        targets += found
    results = []
    ips: dict[str, str] | None = None
    for i, (name, machine_id) in enumerate(targets):
        if getattr(client, "runs_remote_commands", False):
            out = await client.unit_status(name, machine_id if infos[name].is_global else None)
            code, text, machine_id = out.exit_status, out.output, out.machine_id or machine_id
        else:
            if ips is None:
                ips = await _machine_ips(client)
            if output_format == "text" and i:
                click.echo("")
            code, text = await asyncio.to_thread(
                run_here_or_there, g.ssh, ["systemctl", "status", "-l", name], machine_id, ips.get(machine_id, ""),
                port=ssh_port, capture=output_format == "json")
            results.append({"name": name, "machineID": machine_id, "exitStatus": code, "output": text})
            continue
        results.append({"name": name, "machineID": machine_id, "exitStatus": code, "output": text})
        if output_format == "text":
            if i:
                click.echo("")  # as fleet: a blank line between units, like systemctl status
            click.echo(text, nl=False)
    if output_format == "json":
        click.echo(json.dumps(results, indent=2))
    return 0


@cli.command()
@click.option("--lines", default=10, show_default=True, type=int, help="Number of recent log lines to return.")
@click.option("-f", "--follow", is_flag=True, help="Continuously print new entries as they are appended to the journal.")
@click.option("--output", "journal_output", default="short", show_default=True,
              help="Output mode of journalctl (short, verbose, json, cat, ...).")
@click.option("--ssh-port", default=22, show_default=True, type=int, help="SSH port (etcd driver).")
@click.option("--sudo", is_flag=True, help="Run journalctl with sudo on the remote machine (etcd driver over SSH).")
@click.option("--machine", default="", help="For a global unit: the machine (ID prefix) to read from (beyond fleet).")
@click.argument("unit", nargs=-1)
@run
async def journal(g: Globals, lines: int, follow: bool, journal_output: str, ssh_port: int, sudo: bool,
                  machine: str, unit: tuple[str, ...]) -> int:
    """Print the journal of a unit in the cluster to stdout (journalctl on its machine)."""
    if len(unit) != 1:
        raise CommandFailed("One unit file must be provided.")
    if lines < 0:
        raise CommandFailed(f"--lines must not be negative, got {lines}")
    name = mangle_unit_name(unit[0])
    client = g.client()
    info = await client.unit(name)
    if info is None:
        raise CommandFailed(f"Unit {name} does not exist.")
    machine_id = info.machine_id
    if info.is_global:
        if not machine:
            raise CommandFailed(f"Unable to retrieve journal of global unit {name}.")
        targets = _remote_targets({name: info}, await client.unit_states(), name, machine)
        if len(targets) != 1:
            raise CommandFailed(f"Machine {machine} does not match exactly one machine running {name}")
        machine_id = targets[0][1]
    elif info.current_state == DesiredState.INACTIVE.value:
        raise CommandFailed(f"Unit {name} does not appear to be running.")
    if getattr(client, "runs_remote_commands", False):
        out = getattr(sys.stdout, "buffer", None) or click.get_binary_stream("stdout")
        async for chunk in client.journal(name, lines=lines, output=journal_output, follow=follow,
                                          machine_id=machine_id if info.is_global else None):
            out.write(chunk)
            out.flush()
        return 0
    command = ["journalctl", "--unit", name, "--no-pager", "-n", str(lines), "--output", journal_output]
    if follow:
        command.append("-f")
    ips = await _machine_ips(client)
    code, _ = await asyncio.to_thread(run_here_or_there, g.ssh, command, machine_id, ips.get(machine_id, ""),
                                      port=ssh_port, sudo=sudo)
    return code


async def _address_of_machine(client: FleetClient, lookup: str) -> tuple[str, str]:
    """fleet's findAddressInMachineList: (address, error)."""
    matches = [m for m in await client.machines() if m.id.startswith(lookup)]
    if len(matches) > 1:
        return "", "found more than one machine"
    if not matches:
        return "", "machine does not exist"
    return matches[0].public_ip, ""


async def _address_of_unit(client: FleetClient, lookup: str) -> tuple[str, str]:
    """fleet's findAddressInRunningUnits: (address, error)."""
    info = await client.unit(mangle_unit_name(lookup))
    if info is None:
        return "", "unit does not exist"
    if info.is_global:
        return "", "global units unsupported"
    ips = await _machine_ips(client)
    return ips.get(info.machine_id, ""), "" if ips.get(info.machine_id) else "unit is not running on a machine"


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--machine", "-m", "by_machine", default="", help="Open SSH connection to a specific machine.")
@click.option("--unit", "-u", "by_unit", default="", help="Open SSH connection to machine running provided unit.")
@click.option("-A", "--forward-agent", is_flag=True, help="Forward local ssh-agent to target machine.")
@click.option("--ssh-port", default=22, show_default=True, type=int, help="SSH port of the machine.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@run
async def ssh(g: Globals, by_machine: str, by_unit: str, forward_agent: bool, ssh_port: int,
              args: tuple[str, ...]) -> int:
    """Open an interactive shell (or run a command) on a machine in the cluster, or on the
    machine where a unit runs: fleetctl ssh {MACHINE|UNIT} [COMMAND...]. Uses the system `ssh`
    client; the exit status is the remote command's."""
    if by_machine and by_unit:
        raise CommandFailed("Both machine and unit flags provided, please specify only one.")
    client = g.client()
    rest = list(args)
    if by_machine:
        addr, err = await _address_of_machine(client, by_machine)
    elif by_unit:
        addr, err = await _address_of_unit(client, by_unit)
    elif not rest:
        addr, err = "", "one machine or unit must be provided"
    else:
        lookup = rest.pop(0)
        (maddr, merr), (uaddr, uerr) = await asyncio.gather(_address_of_machine(client, lookup),
                                                            _address_of_unit(client, lookup))
        if not merr and not uerr:
            addr, err = "", (f"ambiguous argument, both machine and unit found for `{lookup}`.\n"
                             "Please use flag `-m` or `-u` to refine the search")
        elif not merr:
            addr, err = maddr, ""
        elif not uerr:
            addr, err = uaddr, ""
        else:
            addr, err = "", "could not find matching unit or machine"
    if err:
        raise CommandFailed(f"Unable to proceed: {err}")
    if not addr:
        raise CommandFailed("Could not determine address of machine.")
    if rest and rest[0] == "--":
        rest = rest[1:]
    argv = ssh_argv(g.ssh, addr, port=ssh_port, command=rest or None, forward_agent=forward_agent)
    return await asyncio.to_thread(subprocess.call, argv)


@cli.command("fd-forward")
@click.argument("socket_path")
def fd_forward(socket_path: str) -> None:
    """Copy stdin to a unix socket and the socket to stdout (used through --tunnel)."""
    from fleetctl.fdforward import forward

    try:
        code = forward(socket_path)
    except OSError as exc:
        click.echo(f"Error: cannot connect to {socket_path}: {exc.strerror or exc}", err=True)
        sys.exit(1)
    sys.exit(code)


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(fleetctl completion bash)" (beyond fleet)."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    click.echo(cls(cli, {}, "fleetctl", "_FLEETCTL_COMPLETE").source())


@cli.command()
def version() -> None:
    """Print the version and exit."""
    click.echo(f"fleetctl version {__version__}")


@cli.command()
@click.argument("unit", nargs=-1)
def verify(unit) -> None:
    """DEPRECATED: unit signing and verification."""
    deprecated_sign_exit()


def deprecated_sign_exit() -> None:
    click.echo("WARNING: The signed/verified units feature is DEPRECATED and cannot be used.", err=True)
    sys.exit(2)


@cli.command("help")
@click.argument("command", required=False)
@click.pass_context
def help_command(ctx: click.Context, command: str | None) -> None:
    """Show help for fleetctl or for one command."""
    parent = ctx.parent
    if command:
        cmd = cli.get_command(parent, command)
        if cmd is None:
            raise click.UsageError(f"unknown command {command!r}")
        click.echo(cmd.get_help(click.Context(cmd, info_name=command, parent=parent)))
    else:
        click.echo(cli.get_help(parent))



def main() -> None:
    """Run the CLI, then leave without the interpreter's finalization.

    Every command has closed its connections, files and subprocesses by the time click exits;
    what is left is tearing down gRPC's threads and freeing every module, which took 30-80 ms
    (10-25 % of a whole `fleetctl start`). stdout/stderr and logging are flushed first.
    """
    try:
        cli(prog_name="fleetctl")
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a broken pipe: nothing more can be said
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
