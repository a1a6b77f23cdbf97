"""What the unit commands share: resolving arguments to units (fleet's lazyCreateUnits),
submitting them, changing their desired state, and the blocking waits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import click

from fleetd.errors import FleetError, UnitError
from fleetd.model import DesiredState, Machine, Unit
from fleetd.unit.file import UnitFile
from fleetd.unit.name import mangle_unit_name, parse_unit_name
from fleetd.unit.requirements import validate_unit
from fleetctl import output
from fleetctl.client import FleetClient, UnitInfo
from fleetctl.commands.common import CommandFailed, block_timeout
from fleetctl.progress import Progress


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
    try:
        return UnitFile.parse(data, source=path)
    except UnitError as exc:
        raise CommandFailed(f"Error creating units: {exc}") from None


def check_unit(name: str, file: UnitFile) -> None:
    """Client-side validation as fleet's createUnit does (name rules and [X-Fleet] options)."""
    try:
        parse_unit_name(name)
        requirements = validate_unit(file, name)
    except UnitError as exc:
        raise CommandFailed(f"Error creating units: {exc}") from None
    for key in requirements.unknown_options:
        click.echo(f"WARNING: unit {name}: unknown option {key} in [X-Fleet]", err=True)


async def resolve_units(client: FleetClient, args: Sequence[str], replace: bool) -> list[Resolved]:
    """fleet's lazyCreateUnits resolution, done for all arguments before anything is written:
    (1) the registry, (2) a local file, (3) the template in the registry, (4) the template on disk."""
    resolved: list[Resolved] = []
    names = [mangle_unit_name(arg) for arg in args]
    for name in names:
        try:
            parse_unit_name(name)
        except UnitError as exc:
            raise CommandFailed(f"Error creating units: {exc}") from None
    known = {u.name: u for u in await client.units_named(names)}  # one request (API driver)
    for arg, name in zip(args, names):
        existing = known.get(name)
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
                raise CommandFailed(f"Error creating units: unable to find Unit({name}) in Registry or on filesystem")
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


async def resolve_composed(client: FleetClient, units: Sequence[tuple[str, UnitFile]], replace: bool) -> list[Resolved]:
    """Units composed by fleetctl (run, run-pod): a unit of the same name must have the same body
    unless `replace`."""
    resolved = []
    for name, unit in units:
        existing = await client.unit(name)
        if existing is not None and existing.hash != unit.hash and not replace:
            raise CommandFailed(f"Unit {name} already exists with another body; add --replace to replace it "
                                f"(fleetctl cat {name} shows it)")
        same = existing is not None and existing.hash == unit.hash
        resolved.append(Resolved(name, name, None if same else unit, existing))
    return resolved


async def create_resolved(client: FleetClient, resolved: Sequence[Resolved], *, announce: bool = True) -> None:
    new = [Unit(r.name, r.file) for r in resolved if r.file is not None and r.existing is None]
    if new:
        await client.create_units(new)
    for r in resolved:
        if r.file is not None and r.existing is not None:
            await client.replace_unit(Unit(r.name, r.file, r.existing.desired_state))
    if not announce:
        return
    # as fleet's lazyCreateUnits: `Unit X inactive` for each unit written (its current state:
    # none for a global unit, hence fleet's trailing space)
    for r in resolved:
        if r.file is not None:
            click.echo(f"Unit {r.name} {'' if Unit(r.name, r.file).is_global else DesiredState.INACTIVE.value}")


async def submit_and_set(client: FleetClient, resolved: Sequence[Resolved], state: DesiredState, action: str,
                         *, say_unchanged: bool = False) -> list[str]:
    """Submit the resolved units, set their desired state; the names to wait for (the non-global
    units whose state changed or whose body was replaced: a replaced body must come up again)."""
    await create_resolved(client, resolved, announce=not say_unchanged)
    names = list(dict.fromkeys(r.name for r in resolved))
    infos = {u.name: u for u in await client.units_named(names, exact_machine=False)}
    to_change = [n for n in names if infos[n].desired_state is not state]
    if to_change:
        try:
            await client.set_desired_state(to_change, state)
        except FleetError as exc:  # e.g. a template: fleet's "Error starting units: ..."
            raise CommandFailed(f"Error {'starting' if action == 'start' else 'loading'} units: {exc}") from None
    replaced = {r.name for r in resolved if r.file is not None and r.existing is not None}
    waiting = []
    for name in names:
        if name not in to_change and name not in replaced:
            if say_unchanged:
                click.echo(f"Unit {name} already {state.value} (unchanged)")
        elif infos[name].is_global:
            click.echo(f"Triggered global unit {name} {action}")
        else:
            waiting.append(name)
    return waiting


def unit_names(args: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(mangle_unit_name(a) for a in args))


async def find_units(client: FleetClient, args: Sequence[str]) -> list[UnitInfo]:
    """fleet's findUnits: the named units that exist; unknown names are skipped silently."""
    return await client.units_named(unit_names(args))


async def units_to_act_on(client: FleetClient, args: Sequence[str]) -> list[UnitInfo]:
    """The named units that exist, for stop/unload/destroy; as fleet, says "No units given" or
    "Units not found in registry" (stderr) when there are none, and the command exits 0."""
    if not args:
        click.echo("No units given", err=True)
        return []
    found = await find_units(client, args)
    if not found:
        click.echo("Units not found in registry", err=True)
    return found


class MachineLegends:
    """'<id>.../<ip>' of machines, read once when first needed."""

    def __init__(self, client: FleetClient):
        self._client = client
        self._machines: dict[str, Machine] = {}

    async def get(self, machine_id: str) -> str | None:
        if machine_id not in self._machines:
            self._machines.update({m.id: m for m in await self._client.machines()})
        m = self._machines.get(machine_id)
        return output.machine_full_legend(m, False) if m is not None else None


# ---------------------------------------------------------------------------- waiting


def say_triggered(names: Sequence[str], action: str) -> None:
    for name in names:
        click.echo(f"Triggered unit {name} {action}")


async def wait_for_states(client: FleetClient, names: Sequence[str], state: DesiredState, action: str,
                          no_block: bool, block_attempts: int) -> int:
    """fleet's tryWaitForUnitStates: print `Unit X <state> on <machine>` as each unit gets there."""
    if not names:
        return 0
    if no_block:
        say_triggered(names, action)
        return 0
    pending = list(names)
    legends = MachineLegends(client)
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
                    legend = await legends.get(info.machine_id)
                    if legend is not None:
                        message += f" on {legend}"
                progress.clear()
                click.echo(message)
        if pending:
            progress.update(len(names) - len(pending))
        return not pending

    try:
        reached_all = await client.wait(check, block_timeout(block_attempts), names=names)
    finally:
        progress.clear()
    if reached_all:
        return 0
    for name in pending:
        click.echo(f"Error waiting for units: timed out waiting for unit {name} to report state {state.value}", err=True)
    return 1


async def wait_running_or_failed(client: FleetClient, names: Sequence[str], no_block: bool,
                                 block_attempts: int) -> int:
    """Wait until every unit is launched, or failed on its machine (then say so); exit status."""
    if not names:
        return 0
    if no_block:
        say_triggered(names, "start")
        return 0
    pending = list(names)
    failed: list[str] = []
    legends = MachineLegends(client)

    async def where(machine_id: str) -> str:
        return await legends.get(machine_id) or machine_id[:8]

    async def check() -> bool:
        infos = {u.name: u for u in await client.units_named(pending, exact_machine=False)}
        states = {(s.name, s.machine_id): s for s in await client.unit_states_named(pending)}
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

    if not await client.wait(check, block_timeout(block_attempts), names=names):
        for name in pending:
            click.echo(f"Error waiting for units: timed out waiting for unit {name} to report state launched",
                       err=True)
        return 1
    return 1 if failed else 0
