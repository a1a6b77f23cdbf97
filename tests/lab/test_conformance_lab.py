"""The ORIGINAL fleetctl v1.0.0 drives our fleetd (issue 18): every command that needs no ssh.

One 3-node lab of ours for the module. fleet's own `fleetctl` (../shared/peer/fleetctl from the
repository root, see ../shared/peer/README.md) runs inside node 1 against the fleetd API on the
unix socket (`unix:///var/run/fleet.sock`, fleetctl's default), and on the host against a node's
API TCP listener (`http://IP:54728`, the lab's api_tcp). Each effect is checked in the nodes'
own systemd (`systemctl is-active`, `systemctl show`), not only in fleetctl's output.

Skipped, with the reason, where the peer binaries are absent (a clone without ../shared/).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from fleetlab.config import LAB_API_PORT
from fleetlab.peer import find_peer_dir
from fleetlab.sysutil import eventually

pytest_plugins = ["fleetlab.pytest_plugin"]
pytestmark = pytest.mark.lab(nodes=3, wait_fleetd=True)

REPO = Path(__file__).resolve().parents[2]
PEER = find_peer_dir(REPO)
NODE_CTL = "/opt/fleet-peer/fleetctl"
WORK = "/root/hf-conf"


def service(description: str, body: str = "ExecStart=/bin/sleep infinity", extra: str = "") -> str:
    return f"[Unit]\nDescription={description}\n\n[Service]\n{body}\n{extra}"


@pytest.fixture(scope="module")
def fleet(lab, tmp_path_factory):
    if PEER is None:
        pytest.skip(f"the original fleet v1.0.0 binaries are not at {REPO.parent / 'shared' / 'peer'} (nor at $FLEET_PEER_DIR)")
    for node in lab.nodes:
        bin_dir = Path(node.state.root) / NODE_CTL.lstrip("/").rsplit("/", 1)[0]
        bin_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PEER / "fleetctl", bin_dir / "fleetctl")
    fleet = Fleet(lab, tmp_path_factory.mktemp("hf-conf"))
    # fleetd registers its machine before its API listens: wait for the API on every node
    for i in range(1, 4):
        eventually(lambda i=i: fleet.tcp("list-machines", "--no-legend", node=i).stdout.count("\n") == 3,
                   60, f"node {i}'s API on TCP to list 3 machines", interval=0.5)
    eventually(lambda: fleet.unix("list-machines", "--no-legend").stdout.count("\n") == 3, 60,
               "node 1's API on the unix socket", interval=0.5)
    return fleet


class Fleet:
    """fleet's fleetctl against the lab: in node 1 over the unix socket, or on the host over TCP."""

    def __init__(self, lab, host_dir: Path):
        self.lab = lab
        self.n1 = lab.node(1)
        self.node_dir = Path(self.n1.state.root) / WORK.lstrip("/")
        self.node_dir.mkdir(parents=True, exist_ok=True)
        self.host_dir = host_dir

    def write(self, name: str, text: str) -> None:
        (self.node_dir / name).write_text(text)
        (self.host_dir / name).write_text(text)

    def unix(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        cmd = f"cd {WORK} && {NODE_CTL} {shlex.join(args)}"
        return self.n1.exec(cmd, check=False, timeout=timeout)

    def tcp(self, *args: str, node: int = 2, timeout: float = 90) -> subprocess.CompletedProcess:
        # the lab's TCP API wants a cluster client certificate (fleet's --ca-file/--cert-file/--key-file)
        tls = self.lab.client_files()
        flags = [f"--ca-file={tls[0]}", f"--cert-file={tls[1]}", f"--key-file={tls[2]}"] if tls else []
        endpoint = self.lab.api_url(node)
        return subprocess.run([str(PEER / "fleetctl"), f"--endpoint={endpoint}", *flags, *args], cwd=self.host_dir,
                              capture_output=True, text=True, timeout=timeout)

    def ok(self, proc: subprocess.CompletedProcess) -> str:
        assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        return proc.stdout

    def systemd(self, unit: str) -> dict[str, tuple[str, str]]:
        """node name -> (LoadState, ActiveState) of the unit in each node's systemd."""
        out = {}
        for node in self.lab.nodes:
            shown = node.exec(["systemctl", "show", "-p", "LoadState,ActiveState", unit], check=False).stdout
            props = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
            out[node.name] = (props.get("LoadState", ""), props.get("ActiveState", ""))
        return out

    def running_on(self, unit: str) -> list[str]:
        return [n for n, (load, active) in self.systemd(unit).items() if load == "loaded" and active == "active"]

    def node_of(self, line_with_machine: str):
        for node in self.lab.nodes:
            if node.machine_id[:8] in line_with_machine:
                return node
        raise AssertionError(f"no node's machine in {line_with_machine!r}")


@pytest.fixture(autouse=True)
def no_units_left(fleet):
    """Each test starts from an empty cluster, even after a failed one."""
    yield
    left = fleet.unix("list-unit-files", "--no-legend", "--fields=unit").stdout.split()
    if left:
        fleet.unix("destroy", *left)


def test_version_and_list_machines(fleet):
    assert fleet.ok(fleet.unix("version")) == "fleetctl version 1.0.0\n"
    for run in (fleet.unix, fleet.tcp):
        out = fleet.ok(run("list-machines"))
        lines = out.splitlines()
        assert lines[0].split() == ["MACHINE", "IP", "METADATA"]
        assert sorted(line.split()[2] for line in lines[1:]) == sorted(f"hostname={n.name}" for n in fleet.lab.nodes)
        full = fleet.ok(run("list-machines", "--full", "--no-legend", "--fields=machine,ip"))
        assert sorted(full.split()) == sorted([n.machine_id for n in fleet.lab.nodes] + [n.ip for n in fleet.lab.nodes])


def test_submit_load_start_stop_unload_destroy_over_the_unix_socket(fleet):
    name = "hfc-one.service"
    fleet.write(name, service("conformance one"))
    assert fleet.ok(fleet.unix("submit", name)) == f"Unit {name} inactive\n"
    assert fleet.running_on(name) == []
    files = fleet.ok(fleet.unix("list-unit-files", "--no-legend", "--fields=unit,dstate,state,target"))
    assert files.split() == [name, "inactive", "inactive", "-"]

    loaded = fleet.ok(fleet.unix("load", name))
    node = fleet.node_of(loaded)
    assert loaded == f"Unit {name} loaded on {node.machine_id[:8]}.../{node.ip}\n"
    assert fleet.systemd(name)[node.name] == ("loaded", "inactive")

    started = fleet.ok(fleet.unix("start", name))
    assert started == f"Unit {name} launched on {node.machine_id[:8]}.../{node.ip}\n"
    assert fleet.running_on(name) == [node.name]
    units = fleet.ok(fleet.unix("list-units", "--no-legend", "--full"))
    assert units.split() == [name, f"{node.machine_id}/{node.ip}", "active", "running"]

    stopped = fleet.unix("stop", name)
    assert fleet.ok(stopped) == f"Unit {name} loaded on {node.machine_id[:8]}.../{node.ip}\n"
    assert stopped.stderr == f"Successfully stopped units [{name}].\n"
    assert fleet.systemd(name)[node.name] == ("loaded", "inactive")

    unloaded = fleet.unix("unload", name)
    assert fleet.ok(unloaded) == f"Unit {name} inactive\n"
    assert fleet.systemd(name)[node.name][0] == "not-found"

    assert fleet.ok(fleet.unix("destroy", name)) == f"Destroyed {name}\n"
    assert fleet.ok(fleet.unix("list-unit-files", "--no-legend")) == ""


def test_several_units_templates_and_instances_over_tcp(fleet):
    fleet.write("hfc-tmpl@.service", service("template %i", "ExecStart=/bin/sh -c \\\n  'sleep 100000'"))
    names = [f"hfc-tmpl@{i}.service" for i in (1, 2, 3)]
    out = fleet.ok(fleet.tcp("start", *names))
    for name in names:
        assert f"Unit {name} inactive\n" in out and f"Unit {name} launched" in out
        assert len(fleet.running_on(name)) == 1
    listed = fleet.ok(fleet.tcp("list-units", "--no-legend", "--fields=unit,active,sub"))
    assert listed.splitlines() == [f"{n}\tactive\trunning" for n in names]
    # fleet's fleetctl reads the template's body from the registry for a new instance
    assert fleet.ok(fleet.tcp("cat", "hfc-tmpl@1.service")).startswith("[Unit]\nDescription=template %i\n")
    # a template itself cannot be started (fleet's API refuses it)
    fleet.write("hfc-tmpl@.service", service("template %i"))
    bad = fleet.tcp("start", "hfc-tmpl@.service")
    assert bad.returncode == 1 and 'cannot activate template "hfc-tmpl@.service"' in bad.stdout + bad.stderr

    stopped = fleet.tcp("stop", *names[:2], node=3)
    # (fleet's fleetctl sometimes leaves out " on MACHINE/IP" when it waits for several units)
    # (one goroutine per unit: in either order)
    assert sorted(line.split()[:3] for line in fleet.ok(stopped).splitlines()) == [["Unit", n, "loaded"] for n in names[:2]]
    for name in names[:2]:
        assert fleet.running_on(name) == []
    assert len(fleet.running_on(names[2])) == 1
    assert fleet.ok(fleet.tcp("destroy", *names, "hfc-tmpl@.service")).count("Destroyed ") == 4
    for name in names:
        eventually(lambda name=name: all(load == "not-found" for load, _ in fleet.systemd(name).values()),
                   30, f"{name} gone from every node's systemd")


def test_global_unit_runs_on_every_node(fleet):
    name = "hfc-global.service"
    fleet.write(name, service("everywhere", extra="\n[X-Fleet]\nGlobal=true\n"))
    out = fleet.ok(fleet.unix("start", name))
    assert out == f"Unit {name} \nTriggered global unit {name} start\n"
    eventually(lambda: len(fleet.running_on(name)) == 3, 30, "the global unit active on all 3 nodes")
    def three_running():
        out = fleet.ok(fleet.tcp("list-units", "--no-legend"))
        mine = [line for line in out.splitlines() if line.startswith(name)]
        return [line.split()[2:] for line in mine] == [["active", "running"]] * 3 and "\n".join(mine)

    listed = eventually(three_running, 30, "list-units to show 3 running instances")
    assert sorted(line.split()[1] for line in listed.splitlines()) == sorted(
        f"{n.machine_id[:8]}.../{n.ip}" for n in fleet.lab.nodes)
    files = fleet.ok(fleet.unix("list-unit-files", "--no-legend", "--fields=unit,global,dstate,state"))
    assert files.split() == [name, "true", "launched", "-"]
    assert fleet.ok(fleet.unix("stop", name)) == f"Triggered global unit {name} stop\n"
    eventually(lambda: fleet.running_on(name) == [], 30, "the global unit stopped everywhere")
    assert fleet.ok(fleet.unix("destroy", name)) == f"Destroyed {name}\n"
    eventually(lambda: all(load == "not-found" for load, _ in fleet.systemd(name).values()), 30,
               "the global unit gone from every node")


def test_replace_no_block_block_attempts_and_restart(fleet):
    name = "hfc-replace.service"
    fleet.write(name, service("version one"))
    out = fleet.ok(fleet.unix("start", "--no-block", name))
    # (fleet's fleetctl prints the line twice: docs/fleetctl.md, differences table)
    assert out == f"Unit {name} inactive\nTriggered unit {name} start\nTriggered unit {name} start\n"
    eventually(lambda: len(fleet.running_on(name)) == 1, 30, "the --no-block start to take effect")
    assert len(fleet.running_on(name)) == 1

    fleet.write(name, service("version two"))
    differs = fleet.unix("submit", name)
    assert differs.returncode == 0 and "differs from local unit file" in differs.stderr
    replaced = fleet.ok(fleet.unix("start", "--replace", "--block-attempts=60", name))
    assert f"Unit {name} launched on " in replaced
    eventually(lambda: "Description=version two" in fleet.lab.node(fleet.running_on(name)[0]).exec(
        ["systemctl", "show", "-p", "Description", name]).stdout if fleet.running_on(name) else False,
        30, "systemd to run the replaced unit")
    cat = fleet.ok(fleet.unix("cat", name))
    assert cat == service("version two")

    # restart of a unit in state "loaded" starts it (fleet v1.0.0's restart of a *launched*
    # unit waits for the wrong state; docs/fleetctl.md, differences table)
    fleet.ok(fleet.unix("stop", name))
    assert fleet.running_on(name) == []
    restarted = fleet.unix("restart", "--block-attempts=60", name)
    assert restarted.returncode == 0, restarted.stderr
    assert f"Unit {name} launched on " in restarted.stdout
    assert len(fleet.running_on(name)) == 1
    fleet.ok(fleet.unix("destroy", name))


def test_first_start_on_each_fresh_unit_sees_loaded_and_active(fleet):
    """The issue's failure: fleetctl v1.0.0's start checks systemdLoadState == loaded and
    systemdActiveState == active in GET /state; a stale "not-found" made it fail. Every start
    of a new unit must pass (units land on every node: the engine spreads them)."""
    for i in range(6):
        name = f"hfc-fresh{i}.service"
        fleet.write(name, service(f"fresh {i}"))
        started = fleet.unix("start", "--block-attempts=60", name)
        assert started.returncode == 0, f"start {i}: {started.stdout}{started.stderr}"
        assert "Error" not in started.stdout + started.stderr
        assert len(fleet.running_on(name)) == 1
        states = fleet.n1.exec(["curl", "-s", "--unix-socket", "/var/run/fleet.sock",
                                f"http://fleet/fleet/v1/state?unitName={name}"], check=False).stdout
        assert '"systemdLoadState":"loaded"' in states and '"systemdActiveState":"active"' in states, states
    fleet.ok(fleet.unix("destroy", *[f"hfc-fresh{i}.service" for i in range(6)]))


def test_unknown_units_and_bad_input(fleet):
    assert fleet.unix("cat", "hfc-nope.service").returncode == 1
    for cmd in ("stop", "unload", "destroy"):
        proc = fleet.unix(cmd, "hfc-nope.service")
        assert proc.returncode == 0 and proc.stdout == "", (cmd, proc.stdout, proc.stderr)
    fleet.write("hfc-long.service", "[Unit]\nDescription=" + "x" * 2037 + "\n\n[Service]\nExecStart=/bin/true\n")
    long_line = fleet.unix("submit", "hfc-long.service")
    assert long_line.returncode == 1 and "line too long" in long_line.stdout + long_line.stderr
    assert fleet.ok(fleet.unix("list-unit-files", "--no-legend")) == ""
