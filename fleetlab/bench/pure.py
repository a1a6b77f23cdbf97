"""The benchmarks that need no lab (lookup, scale, scheduler): `fleet-lab bench <name>` or
`python -m fleetlab.bench <name> [options]` runs one and prints its figures."""

from __future__ import annotations

import json

import click

from fleetlab.bench.lookup import lookup as run_lookup
from fleetlab.bench.scale import scale as run_scale
from fleetlab.bench.scheduler import scheduler as run_scheduler
from fleetd.errors import FleetError


def _lines(value, prefix: str = ""):
    """`a.b: value` lines of a nested result (per-method traffic tables are left to --json)."""
    for key, item in value.items():
        if key == "by_method":
            continue
        if isinstance(item, dict):
            yield from _lines(item, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}: {item}"


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        for line in _lines(result):
            click.echo(line)


@click.group()
def main() -> None:
    """fleet benchmarks (see docs/performance.md)."""


@main.command()
@click.option("--machines", type=int, default=None, help="Simulated machines (default 1000; --quick: 100).")
@click.option("--units", type=int, default=None, help="Units to start (default 10000; --quick: 1000).")
@click.option("--quick", is_flag=True, help="The CI size: 100 machines x 1,000 units.")
@click.option("--connections", type=int, default=50, show_default=True, help="etcd connections the agents share.")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Give up after this many seconds.")
@click.option("--agent-ttl", type=float, default=30.0, show_default=True, help="Machine lease TTL.")
@click.option("--engine-interval", type=float, default=2.0, show_default=True, help="Engine resync interval.")
@click.option("--idle-seconds", type=float, default=None,
              help="Idle time after the run to measure the engine's idle CPU (default 5 intervals; --quick: 0).")
@click.option("--single-starts", type=int, default=20, show_default=True,
              help="Units then started one at a time on the settled cluster (latency).")
@click.option("--agent-processes", type=int, default=None,
              help="Processes the simulated agents are spread over (default: one per core, at least 2).")
@click.option("--agents-nice", type=int, default=0, show_default=True,
              help="Niceness of the agents processes (e.g. 10: the simulated machines take only "
                   "the CPU that etcd, the engine and the client leave, as on separate machines).")
@click.option("--etcd-option", "etcd_options", multiple=True,
              help="An extra etcd flag, e.g. --etcd-option=--backend-batch-interval=10ms (repeatable).")
@click.option("--etcd-stock", is_flag=True,
              help="etcd with its own defaults, without the large-cluster settings of docs/registry.md "
                   "(--backend-batch-limit=500, GOGC=400) the benchmark uses otherwise.")
@click.option("--profile-dir", type=click.Path(file_okay=False), default=None,
              help="Write cProfile data (agents-K.prof, engine.prof) here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def scale(as_json: bool, **options) -> None:
    """N simulated agents + one engine on a real etcd: time until all units run."""
    _run(lambda: run_scale(**options), as_json)


@main.command()
@click.option("--machines", type=int, default=1000, show_default=True)
@click.option("--units", type=int, default=10_000, show_default=True)
@click.option("--repeat", type=int, default=3, show_default=True)
@click.option("--quick", is_flag=True, help="100 machines x 1,000 units.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def scheduler(as_json: bool, **options) -> None:
    """The pure reconcile() on a synthetic snapshot: placements per second."""
    _run(lambda: run_scheduler(**options), as_json)


@main.command()
@click.option("--units", type=int, default=10_000, show_default=True)
@click.option("--machines", type=int, default=100, show_default=True)
@click.option("--samples", type=int, default=20, show_default=True, help="Names looked up, each every way.")
@click.option("--quick", is_flag=True, help="1,000 units on 10 machines, 10 samples.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def lookup(as_json: bool, **options) -> None:
    """Find named units in a large cluster (real etcd): per name vs. the whole cluster."""
    _run(lambda: run_lookup(**options), as_json)


def _run(fn, as_json: bool) -> None:
    try:
        result = fn()
    except FleetError as exc:
        raise click.ClickException(str(exc)) from exc
    _print(result, as_json)


BENCHMARKS = {"lookup": run_lookup, "scale": run_scale, "scheduler": run_scheduler}
