"""fleetctl's container commands: run and run-pod (the units are composed by fleetctl/containers.py)."""

from __future__ import annotations

import click

from fleetd.model import DesiredState
from fleetd.unit.file import UnitFile
from fleetctl.commands.common import CommandFailed, Globals, blocking_options, run
from fleetctl.commands.unitops import resolve_composed, submit_and_set, wait_running_or_failed
from fleetctl.containers import base_name, compose_unit, container_options, options_from, parse_container_arg, pod_units


def start_options(fn):
    """--replace, --block-attempts, --no-block of run and run-pod."""
    fn = blocking_options(no_block_help="Do not wait for the units to run.",
                          attempts_help="Wait at most N attempts (0.5 s each); 0 waits until each unit runs or fails.")(fn)
    return click.option("--replace", is_flag=True, help="Replace units of the same name that have another body.")(fn)


async def submit_and_start(g: Globals, units: list[tuple[str, UnitFile]], replace: bool,
                           no_block: bool, block_attempts: int) -> int:
    client = g.client()
    resolved = await resolve_composed(client, units, replace)
    waiting = await submit_and_set(client, resolved, DesiredState.LAUNCHED, "start", say_unchanged=True)
    return await wait_running_or_failed(client, waiting, no_block, block_attempts)


@click.command("run")
@click.argument("name")
@container_options
@click.option("--count", default=1, show_default=True, type=click.IntRange(1, 1000),
              help="Run N instances NAME@1..N.service (with --port, they conflict with each other).")
@click.option("--global", "is_global", is_flag=True, help="Run on every machine (Global=true).")
@click.option("--conflicts", multiple=True, metavar="GLOB", help="Never on a machine with a unit matching GLOB.")
@click.option("--machine-of", multiple=True, metavar="UNIT", help="On the machine of UNIT (MachineOf=).")
@click.option("--metadata", multiple=True, metavar="K=V", help="Only on machines with this metadata.")
@click.option("--print", "print_only", is_flag=True, help="Print the unit(s) instead of submitting them.")
@click.option("--service", "services", multiple=True, metavar="NAME",
              help="Declare service NAME ([X-Service]) on the first --port: DNS, list-endpoints. Repeatable.")
@start_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@run
async def run_command(g: Globals, name: str, count: int, is_global: bool, conflicts, machine_of, metadata,
                      print_only: bool, services, replace: bool, no_block: bool, block_attempts: int,
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
    base = base_name(name)
    if is_global and count > 1:
        raise CommandFailed("--global and --count cannot be combined (a global unit runs once per machine)")
    opts = options_from(params, command)
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
    if services:
        from fleetctl.commands.discovery import with_services

        units = [(n, with_services(n, unit, services, opts.ports)) for n, unit in units]
    if print_only:
        for i, (n, unit) in enumerate(units):
            click.echo(("\n" if i else "") + f"# {n}\n" + unit.serialize(), nl=False)
        return 0
    return await submit_and_start(g, units, replace, no_block, block_attempts)



@click.command("run-pod")
@click.argument("pod")
@click.option("--container", "-c", "containers", multiple=True, required=True, metavar="'NAME --image I [...] -- CMD'",
              help="A container of the pod, with the options of `fleetctl run`; the first is the main one.")
@click.option("--conflicts", multiple=True, metavar="GLOB", help="The pod never runs next to a unit matching GLOB.")
@click.option("--metadata", multiple=True, metavar="K=V", help="Only on machines with this metadata.")
@click.option("--print", "print_only", is_flag=True, help="Print the units instead of submitting them.")
@start_options
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
    base = base_name(pod)
    units = pod_units(base, [parse_container_arg(c) for c in containers], conflicts=conflicts, metadata=metadata)
    if print_only:
        for i, (n, unit) in enumerate(units):
            click.echo(("\n" if i else "") + f"# {n}\n" + unit.serialize(), nl=False)
        return 0
    return await submit_and_start(g, units, replace, no_block, block_attempts)
