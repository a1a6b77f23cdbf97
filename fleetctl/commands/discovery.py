"""fleetctl's service discovery commands: list-services, list-endpoints (docs/discovery.md).

Self-contained: they reach the cluster only through the client interface
(`FleetClient.endpoints` / `watch_endpoints`), with either driver.
"""

from __future__ import annotations

import json

import click

from fleetctl import output
from fleetctl.commands.common import CommandFailed, Globals, run
from fleetctl.commands.unitops import check_unit
from fleetd.discovery.view import ServiceView
from fleetd.unit.file import UnitFile
from fleetd.unit.service import is_label, service_section


def _check_service(service: str | None) -> None:
    if service is not None and not is_label(service):
        raise CommandFailed(f"Error: invalid service name {service!r} (a DNS label: a-z, 0-9, -)")


def with_services(name: str, unit: UnitFile, services, ports) -> UnitFile:
    """`fleetctl run --service NAME`: the unit with an [X-Service] per NAME on the first --port."""
    if not ports:
        raise CommandFailed("Error: --service needs a --port (the port the service answers on)")
    port, _, proto = ports[0].partition("/")
    options = list(unit.options)
    for service in services:
        _check_service(service)
        options += service_section(service, int(port) if port.isdigit() else 0, proto or "tcp")
    with_svc = UnitFile.from_options(options, source=name)
    check_unit(name, with_svc)
    return with_svc


def endpoint_rows(endpoints, full: bool) -> list[list[str]]:
    rows = []
    for ep in ServiceView.build(endpoints).endpoints:
        rows.append([ep.service, ep.unit, output.machine_id_legend(ep.machine_id, full), ep.host, str(ep.port),
                     ep.health, ",".join(ep.tags) or "-"])
    return rows


def render_endpoints(endpoints, full: bool, no_legend: bool, output_format: str) -> str:
    if output_format == "json":
        return json.dumps([ep.to_json() for ep in ServiceView.build(endpoints).endpoints], indent=2) + "\n"
    rows = endpoint_rows(endpoints, full)
    if not no_legend:
        rows.insert(0, ["SERVICE", "UNIT", "MACHINE", "ADDRESS", "PORT", "HEALTH", "TAGS"])
    return output.tabwrite(rows)


@click.command("list-services")
@click.option("--no-legend", is_flag=True, help="Do not print a legend (column headers).")
@click.option("--output", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True)
@run
async def list_services(g: Globals, no_legend: bool, output_format: str) -> int:
    """List the services declared by units ([X-Service]) and their healthy/total endpoints."""
    view = ServiceView.build(await g.client().endpoints())
    summaries = view.services()
    if output_format == "json":
        click.echo(json.dumps([{"name": s.service, "healthy": s.healthy, "total": s.total} for s in summaries],
                              indent=2))
        return 0
    rows = [[s.service, f"{s.healthy}/{s.total}"] for s in summaries]
    if not no_legend:
        rows.insert(0, ["SERVICE", "ENDPOINTS"])
    click.echo(output.tabwrite(rows), nl=False)
    return 0


@click.command("list-endpoints")
@click.argument("service", required=False)
@click.option("--watch", is_flag=True, help="Print the endpoints again after every change (until interrupted).")
@click.option("--full", is_flag=True, help="Full machine IDs.")
@click.option("--no-legend", is_flag=True, help="Do not print a legend (column headers).")
@click.option("--output", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True)
@run
async def list_endpoints(g: Globals, service: str | None, watch: bool, full: bool, no_legend: bool,
                         output_format: str) -> int:
    """List service endpoints (unit, machine, address, port, health, tags), of SERVICE or all.

    With --watch, the list is printed now and again after every change (a JSON document per
    line with --output json), fed by an etcd watch (etcd driver) or the API's stream."""
    _check_service(service)
    if not watch:
        click.echo(render_endpoints(await g.client().endpoints(service), full, no_legend, output_format), nl=False)
        return 0
    async for endpoints in g.client().watch_endpoints(service):
        if output_format == "json":
            click.echo(json.dumps([ep.to_json() for ep in ServiceView.build(endpoints).endpoints]))
        else:
            click.echo(render_endpoints(endpoints, full, no_legend, "table"))
    return 0
