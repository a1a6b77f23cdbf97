"""fleetctl's unit commands: submit, load, start, stop, unload, destroy, restart, cat,
list-unit-files, list-units."""

from __future__ import annotations

import json

import click

from fleetd.jobstate import ACTIVE_STATES
from fleetd.model import DesiredState
from fleetd.unit.name import mangle_unit_name
from fleetctl import output
from fleetctl.commands.common import (
    CommandFailed,
    Globals,
    block_timeout,
    blocking_options,
    deprecated_sign,
    list_options,
    parse_fields,
    print_table,
    run,
    sign_option,
)
from fleetctl.commands.unitops import (
    create_resolved,
    find_units,
    resolve_units,
    submit_and_set,
    units_to_act_on,
    wait_for_states,
)


@click.command()
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
    waiting = await submit_and_set(client, await resolve_units(client, units, replace), state, action)
    return await wait_for_states(client, waiting, state, action, no_block, block_attempts)


@click.command()
@click.option("--replace", is_flag=True, help="Replace the units in the registry if the local files differ.")
@blocking_options()
@sign_option
@click.argument("units", nargs=-1)
@run
async def load(g: Globals, replace, no_block, block_attempts, sign, units) -> int:
    """Schedule one or more units in the cluster, first submitting them if necessary."""
    if sign:
        deprecated_sign()
    return await _load_or_start(g, units, replace, no_block, block_attempts, DesiredState.LOADED, "load")


@click.command()
@click.option("--replace", is_flag=True, help="Replace the units in the registry if the local files differ (restarts them).")
@blocking_options()
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


async def _set_and_wait(g: Globals, units, no_block, block_attempts, target: DesiredState, action: str, done: str,
                        split) -> int:
    """stop's and unload's frame: find the units (none: nothing to do); `split(found)` says which
    names to set to `target`, which to wait for and which global units to announce (raising
    CommandFailed before anything is set); then set, announce, wait and say it is done."""
    client = g.client()
    found = await units_to_act_on(client, units)
    if not found:
        return 0
    to_set, waiting, globals_ = split(found)
    if to_set:
        await client.set_desired_state(to_set, target)
    for name in globals_:
        click.echo(f"Triggered global unit {name} {action}")
    code = await wait_for_states(client, waiting, target, action, no_block, block_attempts)
    if code == 0 and not no_block:
        click.echo(f"Successfully {done} units [{' '.join(waiting)}].", err=True)
    return code


def _to_stop(found) -> tuple[list[str], list[str], list[str]]:
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
    return stopping + globals_, stopping, globals_


def _to_unload(found) -> tuple[list[str], list[str], list[str]]:
    found = [u for u in found if u.desired_state is not DesiredState.INACTIVE]
    return ([u.name for u in found], [u.name for u in found if not u.is_global],
            [u.name for u in found if u.is_global])


@click.command()
@blocking_options()
@click.argument("units", nargs=-1)
@run
async def stop(g: Globals, no_block, block_attempts, units) -> int:
    """Stop one or more units in the cluster (they stay loaded)."""
    return await _set_and_wait(g, units, no_block, block_attempts, DesiredState.LOADED, "stop", "stopped", _to_stop)


@click.command()
@blocking_options()
@click.argument("units", nargs=-1)
@run
async def unload(g: Globals, no_block, block_attempts, units) -> int:
    """Unload one or more units from the cluster (they stay submitted)."""
    return await _set_and_wait(g, units, no_block, block_attempts, DesiredState.INACTIVE, "unload", "unloaded",
                               _to_unload)


@click.command()
@blocking_options()
@click.argument("units", nargs=-1)
@run
async def destroy(g: Globals, no_block, block_attempts, units) -> int:
    """Destroy one or more units in the cluster: stop, unload and delete them."""
    client = g.client()
    found = await units_to_act_on(client, units)
    if not found:
        return 0
    destroyed = await client.destroy_units([u.name for u in found])
    for name in destroyed:
        click.echo(f"Destroyed {name}")
    return 0


@click.command()
@blocking_options()
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
    found = await find_units(client, units)
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

        if not await client.wait(globals_stopped, block_timeout(block_attempts), names=globals_):
            raise CommandFailed(f"Error waiting for units: timed out waiting for global units {', '.join(globals_)} to stop")
    await client.set_desired_state([u.name for u in found], DesiredState.LAUNCHED)
    for name in globals_:
        click.echo(f"Triggered global unit {name} restart")
    return await wait_for_states(client, plain, DesiredState.LAUNCHED, "start", no_block, block_attempts)


@click.command()
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
        from fleetctl.commands.images import rendered_text

        click.echo(await rendered_text(g, name, machine), nl=False)
        return 0
    info = await g.client().unit(name)
    if info is None:
        raise CommandFailed(f"Unit {name} not found")
    click.echo(info.file.serialize(), nl=False)
    return 0


@click.command("list-unit-files")
@list_options(output.DEFAULT_UNIT_FILE_FIELDS, output.UNIT_FILE_FIELDS)
@run
async def list_unit_files(g: Globals, fields, full, no_legend, output_format) -> int:
    """List the units that exist in the cluster, whether or not they run."""
    cols = parse_fields(fields, output.UNIT_FILE_FIELDS)
    client = g.client()
    units = await client.units()
    machines = {m.id: m for m in await client.machines()} if any(u.machine_id for u in units) else {}
    if output_format == "json":
        click.echo(json.dumps([
            {"name": u.name, "hash": u.hash, "desiredState": u.desired_state.value,
             "currentState": u.current_state or None, "machineID": u.machine_id or None, "global": u.is_global}
            for u in units], indent=2))
        return 0
    print_table(cols, [[output.UNIT_FILE_FIELDS[c](u, full, machines) for c in cols] for u in units], no_legend)
    return 0


@click.command("list-units")
@list_options(output.DEFAULT_UNIT_FIELDS, output.UNIT_FIELDS)
@run
async def list_units(g: Globals, fields, full, no_legend, output_format) -> int:
    """List the state of units in the cluster, one row per machine running them."""
    cols = parse_fields(fields, output.UNIT_FIELDS)
    client = g.client()
    states = await client.unit_states()
    machines = {m.id: m for m in await client.machines()}
    if output_format == "json":
        click.echo(json.dumps([
            {"name": s.name, "machineID": s.machine_id, "hash": s.hash, "systemdLoadState": s.load_state,
             "systemdActiveState": s.active_state, "systemdSubState": s.sub_state} for s in states], indent=2))
        return 0
    print_table(cols, [[output.UNIT_FIELDS[c](s, full, machines) for c in cols] for s in states], no_legend)
    return 0
