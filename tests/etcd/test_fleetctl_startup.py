"""fleetctl's start-up cost: with the API driver (the default), `fleetctl list-units` imports no
asyncio, gRPC, aetcd, aiohttp, registry or template engine (issue 14). Checked on the import
log of a real process (`python -X importtime`) against a real fleetd API on real etcd; the etcd
driver, which needs them, is the control that the check sees imports at all."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fleetd.model import Machine
from fleetd.unit.file import UnitFile

from _api_server import ThreadedApiServer, publish_state, register_machine

REPO = Path(__file__).resolve().parents[2]
MID = "0123456789abcdef0123456789abcdef"
NEVER_WITH_THE_API = ("asyncio", "grpc", "aetcd", "aiohttp", "fleetd.registry", "jinja2", "yarl")


def imported(stderr: str) -> set[str]:
    """Module names from `python -X importtime`'s log."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":
                names.add(name)
    return names


def forbidden(names: set[str], roots=NEVER_WITH_THE_API) -> list[str]:
    return sorted(n for n in names if any(n == r or n.startswith(r + ".") for r in roots))


def fleetctl_importtime(*args: str) -> subprocess.CompletedProcess:
    """The full CLI (fleetctl.cli), not the fast path of `-m fleetctl` (tests/etcd/test_fleetctl_fast.py)."""
    return subprocess.run([sys.executable, "-X", "importtime", "-c", "from fleetctl.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.fixture
def server(etcd_settings, tmp_path):
    with ThreadedApiServer(etcd_settings, tmp_path / "srv", Machine(MID, "10.1.2.3")) as srv:
        yield srv


def test_list_units_with_the_api_driver_imports_no_asyncio_grpc_aiohttp(server, etcd_settings):
    unit = UnitFile.parse("[Service]\nExecStart=/bin/true\n")
    server.run(register_machine(server.registry, MID, "10.1.2.3"))
    lease = server.run(server.registry.grant_lease(60))
    server.run(publish_state(server.registry, lease, "a.service", MID, unit.hash))
    done = fleetctl_importtime(f"--endpoint={server.unix_endpoint}", "list-units", "--no-legend")
    assert done.returncode == 0, done.stderr[-2000:]
    assert [line.split("\t")[:2] for line in done.stdout.splitlines()] == [["a.service", "01234567.../10.1.2.3"]]
    names = imported(done.stderr)
    assert "fleetctl.api_client" in names and "http.client" in names
    assert forbidden(names) == []
    # the other commands of the common path do not pay for the containers or the etcd driver
    assert not forbidden(names, ("fleetctl.etcd_client", "fleetctl.commands.containers", "fleetctl.commands.images",
                                 "fleetctl.ssh", "subprocess", "logging"))

    # the control: the etcd driver does import them, and the log shows it
    etcd = fleetctl_importtime(f"--endpoint={etcd_settings.endpoints[0]}", "--driver=etcd",
                               f"--etcd-key-prefix={etcd_settings.key_prefix}", "list-units", "--no-legend")
    assert etcd.returncode == 0, etcd.stderr[-2000:]
    assert etcd.stdout == done.stdout
    assert {"asyncio", "aetcd"} <= set(forbidden(imported(etcd.stderr)))


def test_every_command_of_the_table_loads_under_its_name_and_is_listed():
    """The lazy table (fleetctl/commands/__init__.py) is the only registration: each entry must
    import, be a click command of that name, and show in `fleetctl help`."""
    import click
    from click.testing import CliRunner

    from fleetctl.cli import cli
    from fleetctl.commands import COMMANDS

    ctx = click.Context(cli, info_name="fleetctl")
    for name, target in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.name == name, target
    listed = CliRunner().invoke(cli, ["help"]).output.split("Commands:", 1)[1]
    assert re.findall(r"^  (\S+)", listed, re.M) == sorted(COMMANDS)


def test_cli_imports_no_command_module():
    done = subprocess.run([sys.executable, "-c", "import sys, fleetctl.cli; "
                           "print(sorted(m for m in sys.modules if m.startswith('fleetctl.commands.')))"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.stdout.strip() == "['fleetctl.commands.common']", done.stderr
