"""fleetctl's machine commands: list-machines, drain, undrain, set-metadata."""

from __future__ import annotations

import json

import click

from fleetd.model import Machine
from fleetctl import output
from fleetctl.client import FleetClient
from fleetctl.commands.common import CommandFailed, Globals, list_options, parse_fields, print_table, run


@click.command("list-machines")
@list_options(output.DEFAULT_MACHINE_FIELDS, output.MACHINE_FIELDS)
@run
async def list_machines(g: Globals, fields, full, no_legend, output_format) -> int:
    """List the machines in the cluster, with their IP and metadata."""
    cols = parse_fields(fields, output.MACHINE_FIELDS)
    machines = await g.client().machines()
    if output_format == "json":
        click.echo(json.dumps([
            {"id": m.id, "primaryIP": m.public_ip, "metadata": dict(m.metadata), "cpus": m.capacity.cpu,
             "memory": m.capacity.memory, "draining": m.draining, "version": m.version} for m in machines], indent=2))
        return 0
    print_table(cols, [[output.MACHINE_FIELDS[c](m, full) for c in cols] for m in machines], no_legend)
    return 0


async def find_machine(client: FleetClient, prefix: str) -> Machine:
    matches = [m for m in await client.machines() if m.id.startswith(prefix)]
    if not matches:
        raise CommandFailed(f"Machine {prefix} not found")
    if len(matches) > 1:
        raise CommandFailed(f"Machine ID prefix {prefix} is ambiguous: {', '.join(m.short_id for m in matches)}")
    return matches[0]


async def _set_draining(g: Globals, machine: str, draining: bool, now: str) -> int:
    client = g.client()
    m = await find_machine(client, machine)
    await client.set_draining(m.id, draining)
    click.echo(f"Machine {m.short_id}... {now}")
    return 0


@click.command()
@click.argument("machine")
@run
async def drain(g: Globals, machine: str) -> int:
    """Stop placing units on MACHINE and move its units elsewhere, one by one (beyond fleet)."""
    return await _set_draining(g, machine, True, "draining")


@click.command()
@click.argument("machine")
@run
async def undrain(g: Globals, machine: str) -> int:
    """Allow placement on a drained MACHINE again (beyond fleet)."""
    return await _set_draining(g, machine, False, "accepting units")


@click.command("set-metadata")
@click.argument("machine")
@click.argument("pairs", nargs=-1, required=True)
@run
async def set_metadata(g: Globals, machine: str, pairs: tuple[str, ...]) -> int:
    """Set (KEY=VALUE) or delete (KEY=) dynamic metadata of MACHINE (beyond fleet's CLI)."""
    client = g.client()
    m = await find_machine(client, machine)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandFailed(f"invalid metadata {pair!r} (expected KEY=VALUE, or KEY= to delete)")
        await client.set_machine_metadata(m.id, key, value or None)
    return 0
