"""fleetctl's fast path (fleetctl/fast.py): `list-units` and `list-machines` with the API driver
answer with the standard library's socket and json alone, and print exactly what the full CLI
prints. Checked against a real fleetd API on real etcd (pages of 2 items, so that paging is
used), with `python -X importtime` logs of real processes; errors and any command line the fast
path does not know go to the full CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleetd.model import Machine
from fleetd.unit.file import UnitFile
from fleetctl.fast import plan

from _api_server import ThreadedApiServer, publish_state, register_machine
from _forked_cli import ForkedCli, shared, shared_fast_path

REPO = Path(__file__).resolve().parents[2]
MID = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
GONE = "99999999999999999999999999999999"  # reports a state, but is no machine of the cluster
# the fast path's whole import set beyond the interpreter's start-up: fleetctl, fleetctl.fast,
# fleetctl.output, json (and its parts), typing and urllib.parse (for http:// endpoints)
NEVER_ON_THE_FAST_PATH = ("click", "fleetd", "fleetctl.cli", "fleetctl.commands", "fleetctl.api_client",
                          "fleetctl.client", "http", "email", "ssl", "asyncio", "dataclasses", "threading")


def imported(stderr: str) -> set[str]:
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def forbidden(names: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == r or n.startswith(r + ".") for r in NEVER_ON_THE_FAST_PATH))


def fast(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "fleetctl", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO, env=env)


def fast_forked(*args: str) -> subprocess.CompletedProcess:
    """As `fast`, forked from a bare interpreter (tests/_forked_cli.py's ForkedFastPath: the
    same imports, all logged, without the interpreter's start-up); the controls stay cold."""
    return shared_fast_path().run(list(args), timeout=60, cwd=REPO, env=dict(os.environ))


def full(*args: str) -> subprocess.CompletedProcess:
    """The full CLI in a process started cold (for comparisons of start-up behaviour)."""
    return subprocess.run([sys.executable, "-c", "import sys; from fleetctl.cli import main; sys.argv[0] = 'fleetctl'; main()",
                           *args], capture_output=True, text=True, timeout=60, cwd=REPO)


class Forked:
    """`full_cli(*args)`: the full CLI; `full_cli.fast(*args)`: the fast entry point, for the
    runs it hands over to the full CLI (its result's `handed_over`)."""

    def __init__(self, cli: ForkedCli) -> None:
        self.cli = cli

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        return self.cli.run(list(args), cwd=REPO, env=dict(os.environ), timeout=60)

    def fast(self, *args: str) -> subprocess.CompletedProcess:
        return self.cli.run(list(args), cwd=REPO, env=dict(os.environ), timeout=60, entry="fast")


@pytest.fixture(scope="module")
def full_cli():
    """The full CLI's reference runs: a process each, forked from one that imported it once
    (tests/_forked_cli.py, the worker's shared server)."""
    return Forked(shared())


@pytest.fixture(scope="module")
def server(etcd_server, tmp_path_factory):
    from fleetd.config import EtcdSettings

    settings = EtcdSettings(endpoints=(etcd_server.endpoint,), key_prefix="/fast-path/", request_timeout=5.0)
    with ThreadedApiServer(settings, tmp_path_factory.mktemp("fast"), Machine(MID, "10.1.2.3"), token_limit=2) as srv:
        reg = srv.registry
        srv.run(register_machine(reg, MID, "10.1.2.3", {"region": "eu", "disk": "ssd"}))
        srv.run(register_machine(reg, OTHER, ""))
        lease = srv.run(reg.grant_lease(60))
        unit = UnitFile.parse("[Service]\nExecStart=/bin/true\n")
        for name, machine in (("a.service", MID), ("b.service", OTHER), ("c@1.service", MID),
                              ("d.service", GONE), ("e.service", OTHER)):
            srv.run(publish_state(reg, lease, name, machine, unit.hash))
        yield srv


COMMAND_LINES = [
    ["list-units"],
    ["list-units", "--no-legend"],
    ["list-units", "--full", "--fields=unit,hash,load,active,sub,machine"],
    ["list-units", "-l", "--fields", "machine,unit"],
    ["list-units", "--output", "json"],
    ["list-machines"],
    ["list-machines", "--full", "--fields=machine,ip,metadata,cpus,memory,draining,version"],
    ["list-machines", "--output=json", "--no-legend"],
]


@pytest.mark.parametrize("args", COMMAND_LINES, ids=lambda a: " ".join(a))
def test_fast_path_prints_what_the_full_cli_prints_and_imports_neither_click_nor_fleetd(server, full_cli, args):
    for endpoint in (server.unix_endpoint, server.tcp_endpoint):
        quick = fast_forked(f"--endpoint={endpoint}", *args)
        slow = full_cli(f"--endpoint={endpoint}", *args)
        assert (quick.returncode, slow.returncode) == (0, 0), (quick.stderr[-2000:], slow.stderr[-2000:])
        assert quick.stdout == slow.stdout
        names = imported(quick.stderr)
        assert "fleetctl.fast" in names and "fleetctl.output" in names
        assert forbidden(names) == [], "the fast path imported the full CLI's modules"
        # the control: the same line with a flag the fast path does not know is the full CLI's
        # (that the import check then sees fleetctl.cli: test_the_import_check_sees_the_full_cli)
        assert plan([f"--endpoint={endpoint}", *args, "--bogus"], os.environ) is None
    table = fast_forked(f"--endpoint={server.unix_endpoint}", "list-units", "--no-legend").stdout
    assert [line.split("\t")[0] for line in table.splitlines()] == [
        "a.service", "b.service", "c@1.service", "d.service", "e.service"]  # all pages
    assert "99999999...\t" in table  # the unknown machine's ID alone


@pytest.mark.parametrize("args", [COMMAND_LINES[0], COMMAND_LINES[-1]], ids=lambda a: " ".join(a))
def test_the_import_check_sees_the_full_cli(server, args):
    """The control of the comparisons above, in real processes: with a flag the fast path does
    not know, the same command line imports the full CLI, and the check says so."""
    for endpoint in (server.unix_endpoint, server.tcp_endpoint):
        control = fast(f"--endpoint={endpoint}", *args, "--bogus")
        assert control.returncode != 0 and "Error: No such option '--bogus'." in control.stderr
        names = imported(control.stderr)
        assert "fleetctl.cli" in names and "click" in forbidden(names)


def test_environment_endpoint_and_driver(server):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL_")}
    env["FLEETCTL_ENDPOINT"] = server.unix_endpoint
    quick = fast("list-units", env=env)
    assert quick.returncode == 0 and "a.service" in quick.stdout and not forbidden(imported(quick.stderr))
    env["FLEETCTL_DEBUG"] = "1"  # not the fast path's: the full CLI answers
    assert "fleetctl.cli" in imported(fast("list-units", env=env).stderr)


@pytest.mark.parametrize("args", [
    ["list-units", "--fields=unit,bogus"],  # the full CLI's error message
    ["list-units", "--help"],
    ["list-units", "extra-argument"],
    ["--driver=etcd", "--endpoint=http://127.0.0.1:1", "list-units"],
])
def test_what_the_fast_path_does_not_know_the_full_cli_answers(server, full_cli, args):
    """The fast entry point hands these over: forked (tests/_forked_cli.py, entry "fast"; the
    cold hand-overs are test_the_import_check_sees_the_full_cli's and the environment's)."""
    if not any(a.startswith("--endpoint") for a in args):
        args = [f"--endpoint={server.unix_endpoint}", *args]
    quick, slow = full_cli.fast(*args), full_cli(*args)
    assert quick.handed_over
    assert (quick.returncode, quick.stdout) == (slow.returncode, slow.stdout)
    if args[-1] != "--help":
        assert quick.returncode != 0 and slow.stderr.strip().splitlines()[-1] in quick.stderr


def test_unreachable_api_gives_the_full_clis_error_line(tmp_path):
    for endpoint in (f"unix://{tmp_path}/nothing.sock", "http://127.0.0.1:9"):
        quick, slow = fast(f"--endpoint={endpoint}", "list-units"), full(f"--endpoint={endpoint}", "list-units")
        assert quick.returncode == slow.returncode == 1
        assert quick.stderr.strip().splitlines()[-1] == slow.stderr.strip()
        assert "fleet API unreachable at" in slow.stderr and not forbidden(imported(quick.stderr))


@pytest.mark.parametrize("argv", [
    ["list-units", "--fields"],  # a flag without its value
    ["--tunnel=bastion", "list-units"],
    ["--endpoint=https://user@10.0.0.1:443", "list-units"],  # user info in the URL
    ["--endpoint=http://10.0.0.1:2379", "list-units"],  # etcd's port: the etcd driver
    ["--endpoint=unix:///a.sock,unix:///b.sock", "list-units"],
    ["--debug", "list-units"],
    ["list-u"],  # prefixes are the full CLI's
    ["list-units", "--output=yaml"],
    ["--request-timeout=soon", "list-units"],
])
def test_plan_leaves_these_to_the_full_cli(argv):
    assert plan(argv, {}) is None


def test_plan_reads_global_flags_and_environment():
    opts = plan(["--endpoint", "http://[::1]:8080/pre/", "--request-timeout=2", "list-machines", "-l"], {})
    assert (opts["tcp"], opts["prefix"], opts["timeout"], opts["full"]) == (("::1", 8080), "/pre", 2.0, True)
    opts = plan(["list-units"], {"FLEETCTL_ENDPOINT": "/run/f.sock", "FLEETCTL_CA_FILE": "/ca.pem"})
    assert (opts["unix"], opts["display"]) == ("/run/f.sock", "unix:///run/f.sock")
    assert plan(["--driver=api", "--endpoint=10.0.0.1:2379", "list-units"], {})["tcp"] == ("10.0.0.1", 2379)
    assert plan(["list-units"], {"FLEETCTL_TUNNEL": "bastion"}) is None
    assert plan(["list-units"], {"FLEETCTL_LIST_UNITS_FIELDS": "unit"}) is None
