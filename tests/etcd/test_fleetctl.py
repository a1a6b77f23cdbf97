"""fleetctl (etcd driver) against a real etcd: fleet's commands, messages, exit codes, formats."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleetctl.cli import cli
from _forked_cli import shared
from fleetctl.output import tabwrite
from fleetd.model import DesiredState, Machine, Placement, UnitState
from fleetd.registry import Registry

REPO = Path(__file__).resolve().parents[2]
HELLO = (REPO / "units" / "hello.service").read_text()


@pytest.fixture
def fleetctl(etcd_settings, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    base = ["--driver=etcd", f"--endpoint={etcd_settings.endpoints[0]}", f"--etcd-key-prefix={etcd_settings.key_prefix}"]

    def run(*args: str):
        return runner.invoke(cli, base + list(args), catch_exceptions=False)

    return run


def registry_call(settings, fn):
    async def go():
        async with await Registry.connect(settings) as reg:
            return await fn(reg)
    return asyncio.run(go())


def write(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return name


def test_submit_list_cat_destroy(fleetctl, tmp_path):
    write(tmp_path, "hello.service", HELLO)
    r = fleetctl("submit", "hello.service")
    assert r.exit_code == 0 and r.output == "Unit hello.service inactive\n"  # as fleet v1.0.0
    r = fleetctl("list-unit-files")
    lines = r.output.splitlines()
    assert lines[0].split() == ["UNIT", "HASH", "DSTATE", "STATE", "TARGET"]
    assert lines[1].split() == ["hello.service", lines[1].split()[1], "inactive", "inactive", "-"]
    assert len(lines[1].split()[1]) == 7
    r = fleetctl("cat", "hello")  # name mangling: hello -> hello.service
    assert r.output == HELLO  # byte-exact
    r = fleetctl("destroy", "hello.service")
    assert r.output == "Destroyed hello.service\n"
    assert fleetctl("list-unit-files", "--no-legend").output == ""
    # destroying something unknown is silent and succeeds (fleet's findUnits)
    assert fleetctl("destroy", "nope.service").exit_code == 0


def test_submit_is_idempotent_and_warns_on_difference(fleetctl, tmp_path):
    write(tmp_path, "hello.service", HELLO)
    assert fleetctl("submit", "hello.service").exit_code == 0
    assert fleetctl("submit", "hello.service").exit_code == 0
    write(tmp_path, "hello.service", HELLO.replace("sleep 1", "sleep 2"))
    r = fleetctl("submit", "hello.service")
    assert r.exit_code == 0
    assert "WARNING: Unit hello.service in registry differs from local unit file hello.service" in r.stderr
    assert "sleep 1;" in fleetctl("cat", "hello.service").output
    r = fleetctl("submit", "--replace", "hello.service")
    assert r.exit_code == 0
    assert "sleep 2;" in fleetctl("cat", "hello.service").output


def test_paths_are_reduced_to_base_names(fleetctl, tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path, "sub/hello.service", HELLO)
    assert fleetctl("submit", "sub/hello.service").exit_code == 0
    assert fleetctl("list-unit-files", "--no-legend", "--fields=unit").output == "hello.service\n"


@pytest.mark.parametrize(
    "arg,message",
    [
        ("a b.service", "invalid unit name \"a b.service\": character ' ' not allowed"),
        ("a" * 300 + ".service", "longer than 256 characters"),
        ("../x.service", "unable to find Unit(x.service) in Registry"),
        ("missing.service", "unable to find Unit(missing.service) in Registry"),
    ],
)
def test_bad_names_fail_with_one_line_and_write_nothing(fleetctl, etcd_settings, tmp_path, arg, message):
    write(tmp_path, "good.service", HELLO)
    r = fleetctl("submit", "good.service", arg)
    assert r.exit_code == 1
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert registry_call(etcd_settings, lambda reg: reg.list_units()) == []


@pytest.mark.parametrize(
    "body,message",
    [
        ("[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineID=abc\nConflicts=x*\n", "MachineID"),
        ("[Service]\nExecStart=/bin/true\n[X-Fleet]\nGlobal=true\nMachineOf=x.service\n", "Global"),
        ("[Service]\nExecStart=/bin/true\n[X-Fleet]\nConflicts=a*\nReplaces=b*\n", "Conflicts"),
        ("[Service\nExecStart=/bin/true\n", "bad.service"),
        ("ExecStart=/bin/true\n", "bad.service"),
        ("[Service]\nExecStart=" + "x" * 3000 + "\n", "line too long"),
    ],
)
def test_bad_unit_files_fail_and_write_nothing(fleetctl, etcd_settings, tmp_path, body, message):
    write(tmp_path, "bad.service", body)
    r = fleetctl("submit", "bad.service")
    assert r.exit_code == 1, r.output
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert registry_call(etcd_settings, lambda reg: reg.list_units()) == []


def test_instances_from_local_and_registered_templates(fleetctl, tmp_path):
    write(tmp_path, "web@.service", "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nConflicts=web@*.service\n")
    assert fleetctl("submit", "web@1.service").exit_code == 0  # template found on disk
    assert fleetctl("submit", "web@.service").exit_code == 0
    (tmp_path / "web@.service").unlink()
    assert fleetctl("submit", "web@2.service").exit_code == 0  # template from the registry
    names = fleetctl("list-unit-files", "--no-legend", "--fields=unit").output.split()
    assert names == ["web@.service", "web@1.service", "web@2.service"]
    assert fleetctl("cat", "web@2.service").output == fleetctl("cat", "web@.service").output


def test_load_and_start_record_desired_state_no_block(fleetctl, etcd_settings, tmp_path):
    write(tmp_path, "hello.service", HELLO)
    write(tmp_path, "glob.service", "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nGlobal=true\n")
    r = fleetctl("load", "--no-block", "hello.service")
    assert r.output == "Unit hello.service inactive\nTriggered unit hello.service load\n"
    r = fleetctl("start", "--no-block", "hello.service", "glob.service")
    assert "Triggered unit hello.service start" in r.output
    assert "Triggered global unit glob.service start" in r.output
    units = {u.name: u for u in registry_call(etcd_settings, lambda reg: reg.list_units())}
    assert units["hello.service"].desired_state is DesiredState.LAUNCHED
    r = fleetctl("list-unit-files", "--fields=unit,global,dstate,state,target")
    rows = [line.split() for line in r.output.splitlines()[1:]]
    assert ["glob.service", "true", "launched", "-", "global"] in rows
    r = fleetctl("unload", "--no-block", "hello.service")
    assert r.output == "Triggered unit hello.service unload\n"


def test_blocking_start_times_out_without_agents(fleetctl, tmp_path):
    write(tmp_path, "hello.service", HELLO)
    r = fleetctl("start", "--block-attempts=2", "hello.service")
    assert r.exit_code == 1
    assert "timed out waiting for unit hello.service to report state launched" in r.stderr


def test_stop_refuses_inactive(fleetctl, tmp_path):
    write(tmp_path, "hello.service", HELLO)
    fleetctl("submit", "hello.service")
    r = fleetctl("stop", "hello.service")
    assert r.exit_code == 1 and "Unable to stop unit hello.service in state inactive" in r.stderr


def test_blocking_waits_are_answered_by_published_state(fleetctl, etcd_settings, tmp_path):
    """A simulated agent (real registry) places and reports the unit; fleetctl prints fleet's line."""
    write(tmp_path, "hello.service", HELLO)
    mid = "0123456789abcdef0123456789abcdef"

    async def agent(reg: Registry):
        lease = await reg.grant_lease(10)
        await reg.register_machine(Machine(mid, "10.1.2.3"), lease)
        await reg.campaign(mid, lease)
        while (unit := await reg.get_unit("hello.service")) is None or unit.desired_state is not DesiredState.LAUNCHED:
            await asyncio.sleep(0.05)
        await reg.apply_schedule(fence_machine_id=mid, place=[Placement(unit.name, mid, unit.hash, DesiredState.LAUNCHED)])
        await reg.publish_states([UnitState(unit.name, mid, unit.hash, "loaded", "active", "running")], lease)

    def run_agent():
        asyncio.run(_with_registry(etcd_settings, agent))

    import threading

    t = threading.Thread(target=run_agent)
    t.start()
    r = fleetctl("start", "--block-attempts=20", "hello.service")
    t.join()
    assert r.exit_code == 0, r.stderr
    assert r.output == "Unit hello.service inactive\nUnit hello.service launched on 01234567.../10.1.2.3\n"
    r = fleetctl("list-units")
    assert r.output.splitlines()[1].split() == ["hello.service", "01234567.../10.1.2.3", "active", "running"]
    r = fleetctl("list-machines", "--full")
    assert r.output.splitlines()[1].split() == [mid, "10.1.2.3", "-"]


async def _with_registry(settings, fn):
    async with await Registry.connect(settings) as reg:
        await fn(reg)


def test_list_fields_validation(fleetctl):
    r = fleetctl("list-units", "--fields=unit,bogus")
    assert r.exit_code == 1 and 'Invalid key in output format: "bogus"' in r.stderr


def test_tabwriter_matches_go():
    # Go: tabwriter.NewWriter(out, 0, 8, 1, '\t', 0) with "UNIT\tHASH\n" style input
    rows = [["UNIT", "HASH", "DSTATE"], ["hello.service", "e55c0ae", "launched"]]
    assert tabwrite(rows) == "UNIT\t\tHASH\tDSTATE\nhello.service\te55c0ae\tlaunched\n"
    rows = [["MACHINE", "IP", "METADATA"], ["148a18ff...", "10.0.0.1", "-"]]
    assert tabwrite(rows) == "MACHINE\t\tIP\t\tMETADATA\n148a18ff...\t10.0.0.1\t-\n"


def python_m_fleetctl(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """`python -m fleetctl ARGS`, forked (tests/_forked_cli.py, entry "fast": fleetctl/__main__.py's
    fast entry point, which hands these over to the full CLI): a process of its own with its
    exit code and output, the imports done once by the worker's fork server."""
    return shared().run(args, cwd=os.getcwd(), env=env, timeout=60, entry="fast")


def test_exit_codes_and_help_through_the_real_binary(etcd_settings, tmp_path):
    env = dict(os.environ, FLEETCTL_ENDPOINT=etcd_settings.endpoints[0], FLEETCTL_DRIVER="etcd",
               FLEETCTL_ETCD_KEY_PREFIX=etcd_settings.key_prefix)
    # the real binary, a cold process; the other command lines forked, as the same entry point
    out = subprocess.run([sys.executable, "-m", "fleetctl", "version"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.startswith("fleetctl version ")
    out = python_m_fleetctl(["verify", "x"], env)
    assert out.returncode == 2 and "DEPRECATED" in out.stderr
    out = python_m_fleetctl(["--help"], env)
    assert out.returncode == 0 and "list-unit-files" in out.stdout
    # environment variables reach the etcd driver: an empty cluster lists nothing
    out = python_m_fleetctl(["list-unit-files", "--no-legend"], env)
    assert out.returncode == 0 and out.stdout == ""
    # prefix matching of commands, as fleet's CLI
    out = python_m_fleetctl(["list-unit-f", "--no-legend"], env)
    assert out.returncode == 0
    bad = dict(env, FLEETCTL_ENDPOINT="http://127.0.0.1:1", FLEETCTL_REQUEST_TIMEOUT="0.5")
    out = python_m_fleetctl(["list-unit-files"], bad)
    assert out.returncode == 1 and "etcd unreachable" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_second_etcd_endpoint_is_used_when_the_first_is_down(etcd_settings):
    from fleetlab.testing.etcd import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    env = dict(os.environ, FLEETCTL_DRIVER="etcd", FLEETCTL_ETCD_KEY_PREFIX=etcd_settings.key_prefix,
               FLEETCTL_ENDPOINT=f"{dead},{etcd_settings.endpoints[0]}")
    out = python_m_fleetctl(["list-machines"], env)
    assert out.returncode == 0 and out.stdout.split() == ["MACHINE", "IP", "METADATA"] and out.stderr == ""
    env["FLEETCTL_ENDPOINT"] = f"{dead},http://127.0.0.1:{free_port()}"
    env["FLEETCTL_REQUEST_TIMEOUT"] = "1"
    out = python_m_fleetctl(["list-machines"], env)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1 and "etcd unreachable" in out.stderr


def test_main_flushes_output_and_keeps_exit_codes_despite_os_exit():
    """main() leaves with os._exit: what was printed must still arrive, exit codes unchanged
    (each run fleetctl.cli's main() in a process of its own, forked: tests/_forked_cli.py)."""

    def fleetctl(*args: str) -> subprocess.CompletedProcess:
        return shared().run(list(args), cwd=os.getcwd(), env=dict(os.environ), timeout=60)

    version = fleetctl("--version")
    assert (version.returncode, version.stdout) == (0, f"fleetctl version {__import__('fleetd').__version__}\n")
    help_text = fleetctl("--help")
    assert help_text.returncode == 0 and len(help_text.stdout.splitlines()) > 20
    usage = fleetctl("--no-such-flag")
    assert usage.returncode == 2 and "No such option '--no-such-flag'" in usage.stderr
    down = fleetctl("--driver", "etcd", "--endpoint", "http://127.0.0.1:9", "--request-timeout", "0.5", "list-units")
    assert down.returncode == 1 and down.stderr.startswith("Error: etcd unreachable at http://127.0.0.1:9")
