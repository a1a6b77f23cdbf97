"""fleet-lab: boot, inspect, break and remove a local multi-node lab."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from typing import NoReturn

import click

from fleetd.errors import FleetError, LabError

from .config import DEFAULT_AGENT_TTL, DEFAULT_KEY_PREFIX, LAB_API_PORT, parse_metadata_specs
from .lab import Lab, list_labs
from .node import Node

DEFAULT_LAB = os.environ.get("FLEETLAB_NAME", "lab")

name_option = click.option(
    "--name", "-n", "name", default=None, help=f"Lab name (default: $FLEETLAB_NAME or {DEFAULT_LAB!r})."
)


def _lab_name(name: str | None, node: str | None = None) -> str:
    """--name if given; else the lab a full node name (`<LAB>-nK`) belongs to; else the default."""
    if name:
        return name
    if node and "-n" in node:
        return node.rpartition("-n")[0]
    return DEFAULT_LAB


def _node(name: str | None, node: str) -> Node:
    return Lab.attach(_lab_name(name, node)).node(node)


def _raise_on_signal() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit so that a half-built lab is rolled back."""

    def handler(signum, _frame) -> NoReturn:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


class _Group(click.Group):
    """Reports the project's errors on one line (`Error: ...`, exit 1) instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FleetError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """A local fleet lab: systemd-nspawn nodes on overlay roots, an etcd cluster and fleetd."""


@main.command()
@name_option
@click.option("--nodes", "-N", default=3, show_default=True, help="Number of nodes.")
@click.option("--agent-ttl", default=DEFAULT_AGENT_TTL, show_default=True, help="fleetd agent_ttl.")
@click.option("--metadata", "-m", multiple=True, metavar="[N:]K=V[,K=V]",
              help="fleetd metadata for every node, or for node N only (repeatable).")
@click.option("--etcd-key-prefix", default=DEFAULT_KEY_PREFIX, show_default=True)
@click.option("--fleetd/--no-fleetd", default=True, show_default=True, help="Install and start fleetd.")
@click.option("--wait-fleetd", is_flag=True, help="Wait until fleetd.service is active on every node (its machine registered, its API listening).")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for boots (and fleetd).")
@click.option("--insecure", is_flag=True,
              help="No TLS and no etcd authentication: etcd, the fleet API and the image server in "
                   "plaintext, open to anyone on the lab's bridge.")
@click.option("--busybox/--no-busybox", default=True, show_default=True,
              help="Import the busybox image (fleetctl image build-busybox) on every node, and put the "
                   "checkout's fleetctl/fleet-confd/fleet-run on the nodes' PATH (fleetlab/provision.py).")
def up(name, nodes, agent_ttl, metadata, etcd_key_prefix, fleetd, wait_fleetd, timeout, insecure, busybox) -> None:
    """Boot a lab of N nodes and wait until its systemds and etcd are up.

    By default the lab has a cluster PKI (<run dir>/<name>/pki): etcd with client certificates
    on client and peer URLs and RBAC (each fleetd is the etcd user named by its certificate,
    limited to the key prefix), the fleet API on TCP and the image server with client
    certificates. `fleet-lab env` exports the operator certificate for fleetctl and etcdctl.
    """
    _raise_on_signal()
    if wait_fleetd and not fleetd:
        raise click.UsageError("--wait-fleetd needs fleetd (drop --no-fleetd)")
    lab = Lab(
        name or DEFAULT_LAB,
        nodes=nodes,
        agent_ttl=agent_ttl,
        fleetd=fleetd,
        metadata=parse_metadata_specs(metadata, nodes),
        etcd_key_prefix=etcd_key_prefix,
        boot_timeout=timeout,
        insecure=insecure,
    )
    if insecure:
        click.echo("WARNING: --insecure: etcd, the fleet API and the image server speak plaintext without "
                   "authentication; anyone on the lab's bridge controls the cluster (root on every node)",
                   err=True)
    busybox = busybox and fleetd
    lab.up(wait_fleetd=wait_fleetd or busybox, fleetd_timeout=timeout)
    if busybox:
        from .provision import install_commands, provide_busybox

        install_commands(lab)
        provide_busybox(lab, click.echo)
    _print_status(lab)


@main.command()
@name_option
def down(name) -> None:
    """Halt the lab's nodes and remove its mounts, netns, links and state (idempotent)."""
    lab_name = name or DEFAULT_LAB
    try:
        lab = Lab.attach(lab_name)
    except LabError:
        lab = Lab(lab_name)  # no state: remove whatever carries the lab's name
    warnings = lab.down()
    for warning in warnings:
        click.echo(f"fleet-lab: {warning}", err=True)
    if warnings:
        sys.exit(1)
    click.echo(f"lab {lab_name}: down")


@main.command("list")
def list_() -> None:
    """Names of the labs that exist on this host."""
    for name in list_labs():
        click.echo(name)


def _print_status(lab: Lab) -> None:
    st = lab.status()
    click.echo(f"lab {st['name']}: subnet {st['subnet']} bridge {st['bridge']} host {st['host_ip']}")
    click.echo(f"{'NODE':<16}{'IP':<16}{'MACHINE-ID':<34}{'INIT':>8}  {'STATE':<24}ETCD")
    for n in st["nodes"]:
        etcd = {None: "-", True: "healthy", False: "UNHEALTHY"}[n["etcd"]]
        state = n["state"] + (" (partitioned)" if n["partitioned"] else "")
        click.echo(f"{n['name']:<16}{n['ip']:<16}{n['machine_id']:<34}{n['init_pid'] or '-':>8}  {state:<24}{etcd}")
    click.echo(f"etcd: {'healthy' if st['etcd_healthy'] else 'NOT healthy'} ({','.join(st['etcd_endpoints'])})")
    if st.get("dashboard"):
        click.echo(f"dashboard: {st['dashboard']} (every node's fleetd serves it on port {LAB_API_PORT})")


@main.command()
@name_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(name, as_json) -> None:
    """Nodes, IPs, machine-ids, whether they run, and etcd health."""
    lab = Lab.attach(name or DEFAULT_LAB)
    if as_json:
        click.echo(json.dumps(lab.status(), indent=2))
    else:
        _print_status(lab)


@main.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@name_option
@click.argument("node")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(name, node, cmd) -> None:
    """Run CMD inside NODE (nsenter into all namespaces of its init)."""
    argv = _node(name, node).command(list(cmd))
    os.execvp(argv[0], argv)


def _node_command(verb: str, help_text: str):
    @main.command(verb, help=help_text)
    @name_option
    @click.argument("node")
    def command(name, node) -> None:
        target = _node(name, node)
        getattr(target, verb.replace("-", "_"))()
        click.echo(f"{target.name}: {verb} done")

    return command


_node_command("kill", "Crash NODE: SIGKILL its init (PID 1 of its pid namespace).")
_node_command("start", "Boot a killed or stopped NODE again (same root and machine-id).")
_node_command("stop", "Halt NODE cleanly.")
_node_command("stop-fleetd", "Stop fleetd.service inside NODE.")
_node_command("start-fleetd", "Start fleetd.service inside NODE.")
_node_command("partition", "Cut NODE off from the other nodes and the host (it keeps running).")
_node_command("heal", "Undo `partition NODE`.")


@main.command(context_settings={"ignore_unknown_options": True})
@name_option
@click.argument("node")
@click.argument("unit", required=False)
@click.option("--lines", "-l", type=int, default=None, help="Only the last N lines.")
@click.option("--follow", "-f", is_flag=True, help="Follow the journal.")
def logs(name, node, unit, lines, follow) -> None:
    """The journal of NODE (of UNIT only, if given)."""
    target = _node(name, node)
    if follow:
        cmd = ["journalctl", "--no-pager", "-f"] + (["-u", unit] if unit else []) + (["-n", str(lines)] if lines else [])
        argv = target.command(cmd)
        os.execvp(argv[0], argv)
    click.echo(target.logs(unit, lines), nl=False)


@main.command()
@name_option
def env(name) -> None:
    """Shell exports that point fleetctl at the lab: eval "$(fleet-lab env)"."""
    for key, value in Lab.attach(name or DEFAULT_LAB).user_env().items():
        click.echo(f"export {key}={shlex.quote(value)}")


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@name_option
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def ctl(name, args) -> None:
    """Run the checkout's fleetctl against the lab."""
    lab = Lab.attach(name or DEFAULT_LAB)
    proc = subprocess.run([*lab.fleetctl_command(), *args], env={**os.environ, **lab.env()})
    sys.exit(proc.returncode)


@main.command()
@name_option
@click.option("--nodes", "-N", default=3, show_default=True, help="Number of nodes (a new lab only).")
@click.option("--down", "tear_down", is_flag=True, help="Remove the lab again at the end.")
def demo(name: str | None, nodes: int, tear_down: bool) -> None:
    """Boot (or reuse) a lab and show the three uses on it: unit files started with fleetctl,
    web containers from the busybox image, their service found through etcd (list-endpoints,
    DNS, an nginx proxy), a global unit, and the dashboard's address (fleetlab/demo.py)."""
    from .demo import run_demo

    _raise_on_signal()
    run_demo(name or DEFAULT_LAB, nodes, echo=click.echo, keep=not tear_down)


@main.command()
@click.option("--seed", type=int, default=None, help="Seed of the fault schedule (default: random, printed).")
@click.option("--minutes", default=3.0, show_default=True, help="Minutes of faults (after the set-up).")
@click.option("--nodes", "-N", default=4, show_default=True, help="Nodes of the lab.")
@click.option("--agent-ttl", default=DEFAULT_AGENT_TTL, show_default=True, help="fleetd agent_ttl of the lab.")
@click.option("--containers/--no-containers", default=True, show_default=True, help="Also run busybox container units.")
@click.option("--name", "-n", "name", default=None, help="Name of the lab to boot (default: so-<random>).")
@click.option("--keep-lab", metavar="NAME", default=None, help="Soak this running lab (left running).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def soak(seed, minutes, nodes, agent_ttl, containers, name, keep_lab, as_json) -> None:
    """Chaos soak: faults from a seeded schedule on a lab running 50+ units; checks from every
    node's systemd that no unit runs twice and that everything converges (fleetlab/soak.py).
    Exit status 1 if any invariant was violated."""
    from .soak import report_text, soak as run_soak

    _raise_on_signal()
    result = run_soak(seed=seed, minutes=minutes, nodes=nodes, agent_ttl=agent_ttl, containers=containers,
                      name=name, keep_lab=keep_lab, log=lambda line: click.echo(f"fleet-lab soak: {line}", err=True))
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        for line in report_text(result):
            click.echo(line)
    if result["violations"]:
        sys.exit(1)


# ---------------------------------------------------------------------------- benchmarks


def _bench_command(fn):
    """Options every lab benchmark takes: --keep-lab, --json, --quiet."""
    fn = click.option("--keep-lab", metavar="NAME", default=None,
                      help="Use this running lab (left running) instead of booting a new one.")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="Print every figure as JSON.")(fn)
    fn = click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")(fn)
    return fn


def _run_bench(fn, as_json: bool, quiet: bool, **options) -> None:
    """Run a lab benchmark with progress on stderr, then print its figures (or JSON)."""
    from .bench.common import report_lines

    _raise_on_signal()  # SIGTERM/SIGHUP unwind too: the benchmark's lab is always torn down

    def log(line: str) -> None:
        if not quiet:
            click.echo(f"fleet-lab bench: {line}", err=True)

    result = fn(log=log, **options)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        for line in report_lines(result):
            click.echo(line)


class _BenchGroup(click.Group):
    """`lookup`, `scale` and `scheduler` are fleetlab.bench.pure's commands, imported only when
    used (they pull in grpc: every other fleet-lab command would start slower)."""

    PURE = ("lookup", "scale", "scheduler")

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.PURE])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.PURE:
            from .bench import pure

            return getattr(pure, name)
        return super().get_command(ctx, name)


@main.group(cls=_BenchGroup)
def bench() -> None:
    """Benchmarks (see docs/performance.md). start, burst, failover and footprint each boot a
    lab of their own and always tear it down; lookup, scale and scheduler need no lab."""


@bench.command("start")
@click.option("--runs", default=20, show_default=True, help="Timed starts per method.")
@click.option("--warmup", default=1, show_default=True, help="Uncounted starts before each method's runs.")
@click.option("--nodes", "-N", default=3, show_default=True, help="Nodes of the lab.")
@click.option("--agent-ttl", default=DEFAULT_AGENT_TTL, show_default=True, help="fleetd agent_ttl of the lab.")
@click.option("--api/--no-api", default=True, show_default=True, help="Also through fleetd's HTTP API.")
@click.option("--api-poll", default=0.02, show_default=True, help="Poll interval of the API driver against an API without the change feed.")
@_bench_command
def bench_start(as_json, quiet, **options) -> None:
    """Start one unit until active: fleetctl as a process, the client library, the API."""
    from .bench.start import start

    _run_bench(start, as_json, quiet, **options)


@bench.command("burst")
@click.option("--units", default=300, show_default=True, help="Units started at once.")
@click.option("--runs", default=3, show_default=True, help="Runs per way of submitting.")
@click.option("--via", type=click.Choice(["client", "fleetctl"]), multiple=True,
              help="Submit with the client library in one batch, or `fleetctl start --no-block` (default: both).")
@click.option("--nodes", "-N", default=3, show_default=True, help="Nodes of the lab.")
@click.option("--agent-ttl", default=DEFAULT_AGENT_TTL, show_default=True, help="fleetd agent_ttl of the lab.")
@click.option("--timeout", default=120.0, show_default=True, help="Give up a run after this many seconds.")
@_bench_command
def bench_burst(as_json, quiet, via, **options) -> None:
    """Start many units without blocking until all are active."""
    from .bench.burst import burst
    from .bench.burst import VIAS

    _run_bench(burst, as_json, quiet, via=tuple(via) or VIAS, **options)


@bench.command("failover")
@click.option("--agent-ttl", "agent_ttls", multiple=True, metavar="TTL",
              help="agent_ttl of a lab to measure (repeatable; default: 5s, fleetd's default, and 2s).")
@click.option("--runs", default=3, show_default=True, help="Node kills per TTL.")
@click.option("--units", default=6, show_default=True, help="Units running during each kill.")
@click.option("--leader/--no-leader", default=True, show_default=True, help="Also kill the engine leader's node.")
@click.option("--hiccups/--no-hiccups", default=True, show_default=True,
              help="Also freeze an etcd member and cut a node off for less than the TTL: nothing may move.")
@click.option("--hiccup-fraction", default=0.5, show_default=True, help="Length of a hiccup, as a share of the TTL.")
@click.option("--nodes", "-N", default=3, show_default=True, help="Nodes of each lab.")
@click.option("--wait-quiet/--no-wait-quiet", default=True, show_default=True,
              help="Before each node kill after the first, wait until the last victim's fleetd has been "
                   "registered for the engine's quiet time (else the kill takes the settle path).")
@_bench_command
def bench_failover(as_json, quiet, agent_ttls, **options) -> None:
    """Node kill and leader kill until the units run elsewhere; no failover on hiccups."""
    from .bench.failover import failover

    _run_bench(failover, as_json, quiet, agent_ttls=tuple(agent_ttls) or ("5s", "2s"), **options)


@bench.command("containers")
@click.option("--count", default=200, show_default=True, help="Containers started (one at a time) per runtime.")
@click.option("--runtime", "runtimes", multiple=True, type=click.Choice(["launcher", "nspawn"]),
              help="Runtime to measure (repeatable; default: launcher, i.e. fleet-run).")
@click.option("--settle-seconds", default=5.0, show_default=True, help="Quiet time before memory is read.")
@click.option("--agent-ttl", default=DEFAULT_AGENT_TTL, show_default=True, help="fleetd agent_ttl of the lab.")
@_bench_command
def bench_containers(as_json, quiet, runtimes, **options) -> None:
    """Memory charged and start time per container on one node, beyond the bare workload."""
    from .bench.containers import containers

    _run_bench(containers, as_json, quiet, runtimes=tuple(runtimes) or ("launcher",), **options)


@bench.command("compare")
@click.option("--samples", default=5, show_default=True, help="Samples of list-units and of one-unit starts.")
@click.option("--burst", default=30, show_default=True, help="Units of the blocking burst.")
@click.option("--no-block", "no_block", default=300, show_default=True, help="Units started with --no-block.")
@click.option("--nodes", "-N", default=3, show_default=True, help="Nodes of the lab.")
@click.option("--agent-ttl", default=DEFAULT_AGENT_TTL, show_default=True, help="agent_ttl of both fleets.")
@click.option("--project-only", is_flag=True, help="Only this project's figures (no fleet v1.0.0 side, no peer binaries needed).")
@click.option("--failover/--no-failover", default=True, show_default=True, help="Measure the failover row.")
@_bench_command
def bench_compare(as_json, quiet, **options) -> None:
    """This project next to the original fleet v1.0.0 (../shared/peer/) in one lab and run."""
    from .bench.compare import compare

    _run_bench(compare, as_json, quiet, **options)


@bench.command("footprint")
@click.option("--units", default=100, show_default=True, help="Units running on the lab.")
@click.option("--idle-seconds", default=30.0, show_default=True, help="Idle time CPU is measured over.")
@click.option("--settle-seconds", default=10.0, show_default=True, help="Quiet time before each measurement.")
@click.option("--nodes", "-N", default=1, show_default=True, help="Nodes of the lab (1: one fleetd runs everything).")
@click.option("--agent-ttl", default=DEFAULT_AGENT_TTL, show_default=True, help="fleetd agent_ttl of the lab.")
@_bench_command
def bench_footprint(as_json, quiet, **options) -> None:
    """fleetd's idle RSS and CPU, without units and with N units on the node."""
    from .bench.footprint import footprint

    _run_bench(footprint, as_json, quiet, **options)


@bench.command("discovery")
@click.option("--runs", default=20, show_default=True, help="Units started and stopped one at a time.")
@click.option("--endpoints", default=10000, show_default=True, help="Endpoint records for the DNS load (0: skip).")
@click.option("--qps-seconds", default=5.0, show_default=True, help="How long the DNS throughput is measured.")
@click.option("--concurrency", default=64, show_default=True, help="Outstanding DNS queries during the throughput run.")
@click.option("--nodes", "-N", default=3, show_default=True, help="Nodes of the lab.")
@click.option("--agent-ttl", default=DEFAULT_AGENT_TTL, show_default=True, help="fleetd agent_ttl of the lab.")
@_bench_command
def bench_discovery(as_json, quiet, **options) -> None:
    """Service discovery: unit active -> in DNS, stopped -> gone, the classic sidekick, DNS
    latency/throughput and fleetd's memory with many endpoints."""
    from .bench import discovery

    _run_bench(discovery, as_json, quiet, **options)


# the Vagrant lab's box (fleetlab/box.py)
from .box_cli import box as _box  # noqa: E402

main.add_command(_box)
