"""fleetctl's commands that run something on a machine: status, journal, ssh, fd-forward.

With a driver whose fleetd runs commands for us (`client.runs_remote_commands`: the API)
status and journal go through it; otherwise fleetctl runs them locally or over SSH, as fleet.
"""

from __future__ import annotations

import json
import subprocess
import sys

import click

from fleetd.model import DesiredState
from fleetd.unit.name import mangle_unit_name
from fleetctl.client import FleetClient, UnitInfo
from fleetctl.commands.common import CommandFailed, Globals, gather, in_thread, run
from fleetctl.commands.unitops import unit_names
from fleetctl.ssh import run_here_or_there, ssh_argv


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


@click.command()
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
        if client.runs_remote_commands:
            out = await client.unit_status(name, machine_id if infos[name].is_global else None)
            code, text, machine_id = out.exit_status, out.output, out.machine_id or machine_id
        else:
            if ips is None:
                ips = await _machine_ips(client)
            if output_format == "text" and i:
                click.echo("")
            code, text = await in_thread(
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


@click.command()
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
    if client.runs_remote_commands:
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
    code, _ = await in_thread(run_here_or_there, g.ssh, command, machine_id, ips.get(machine_id, ""),
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


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
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
        (maddr, merr), (uaddr, uerr) = await gather(_address_of_machine(client, lookup),
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
    return await in_thread(subprocess.call, argv)


@click.command("fd-forward")
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
