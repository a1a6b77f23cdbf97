"""fleetctl through the API driver (the default) against a real fleetd API server on real etcd:
golden list outputs, fleet's messages and exit codes, status/journal, fd-forward, and the exact
HTTP requests fleet's Go client (client/http.go over schema/v1-gen.go) sends."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleetctl.api_client import ApiFleetClient, parse_endpoint
from fleetctl.cli import cli, choose_driver
from fleetd.errors import ApiUnavailable
from fleetd.model import DesiredState, Machine, Placement, Unit
from fleetd.unit.file import UnitFile

from _api_server import ThreadedApiServer, publish_state, register_machine

REPO = Path(__file__).resolve().parents[2]
HELLO = (REPO / "units" / "hello.service").read_text()
MID_A = "0123456789abcdef0123456789abcdef"
MID_B = "fedcba9876543210fedcba9876543210"


@pytest.fixture
def server(etcd_settings, tmp_path):
    with ThreadedApiServer(etcd_settings, tmp_path / "srv", Machine(MID_A, "10.1.2.3")) as srv:
        yield srv


@pytest.fixture
def fleetctl(server, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    runner = CliRunner()
    base = [f"--endpoint={server.unix_endpoint}"]  # no --driver: the API is the default

    def run(*args: str):
        return runner.invoke(cli, base + list(args), catch_exceptions=False)

    run.work = work
    return run


def write(directory: Path, name: str, text: str) -> str:
    (directory / name).write_text(text)
    return name


def test_the_api_is_the_default_driver():
    assert choose_driver("unix:///var/run/fleet.sock", "") == "api"
    assert choose_driver("http://10.0.0.1:49153", "") == "api"
    assert choose_driver("http://10.0.0.1:2379", "") == "etcd" == choose_driver("http://h:4001", "")
    assert choose_driver("http://h:2379", "API") == "api"
    assert parse_endpoint("/var/run/fleet.sock").unix_path == "/var/run/fleet.sock"
    assert parse_endpoint("10.0.0.1:49153,10.0.0.2:49153").base_url == "http://10.0.0.1:49153"


def test_submit_cat_list_destroy(fleetctl):
    write(fleetctl.work, "hello.service", HELLO)
    r = fleetctl("submit", "hello.service")
    assert (r.exit_code, r.output) == (0, "Unit hello.service inactive\n")
    r = fleetctl("cat", "hello")
    assert r.output == HELLO
    unit_hash = UnitFile.parse(HELLO).hash
    r = fleetctl("list-unit-files")
    assert r.output == ("UNIT\t\tHASH\tDSTATE\t\tSTATE\t\tTARGET\n"
                        f"hello.service\t{unit_hash[:7]}\tinactive\tinactive\t-\n")
    r = fleetctl("list-unit-files", "--full", "--no-legend", "--fields=unit,hash,desc")
    assert r.output == f"hello.service\t{unit_hash}\tHello World\n"
    assert fleetctl("destroy", "hello.service").output == "Destroyed hello.service\n"
    assert fleetctl("list-unit-files", "--no-legend").output == ""
    assert fleetctl("destroy", "nope.service").exit_code == 0


def test_golden_lists_with_machines_and_states(fleetctl, server):
    """fleet's tab-aligned tables: 7-char hashes, `abcd1234.../IP` legends, sorted metadata."""
    write(fleetctl.work, "hello.service", HELLO)
    write(fleetctl.work, "glob.service", "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nGlobal=true\n")
    assert fleetctl("start", "--no-block", "hello.service", "glob.service").exit_code == 0
    hello = UnitFile.parse(HELLO).hash
    glob = UnitFile.parse("[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nGlobal=true\n").hash

    async def cluster():
        reg = server.registry
        lease_a = await register_machine(reg, MID_A, "10.1.2.3", {"region": "eu", "disk": "ssd"})
        lease_b = await register_machine(reg, MID_B, "10.1.2.4")
        await reg.campaign(MID_A, lease_a)
        await reg.apply_schedule(fence_machine_id=MID_A, place=[
            Placement("hello.service", MID_B, hello, DesiredState.LAUNCHED)])
        await publish_state(reg, lease_b, "hello.service", MID_B, hello)
        await publish_state(reg, lease_a, "glob.service", MID_A, glob)
        await publish_state(reg, lease_b, "glob.service", MID_B, glob, "failed", "failed")

    server.run(cluster())
    assert fleetctl("list-unit-files").output == (
        "UNIT\t\tHASH\tDSTATE\t\tSTATE\t\tTARGET\n"
        f"glob.service\t{glob[:7]}\tlaunched\t-\t\tglobal\n"
        f"hello.service\t{hello[:7]}\tlaunched\tlaunched\tfedcba98.../10.1.2.4\n")
    assert fleetctl("list-units").output == (
        "UNIT\t\tMACHINE\t\t\tACTIVE\tSUB\n"
        "glob.service\t01234567.../10.1.2.3\tactive\trunning\n"
        "glob.service\tfedcba98.../10.1.2.4\tfailed\tfailed\n"
        "hello.service\tfedcba98.../10.1.2.4\tactive\trunning\n")
    assert fleetctl("list-units", "--full", "--no-legend", "--fields=unit,hash,load").output == (
        f"glob.service\t{glob}\tloaded\n"
        f"glob.service\t{glob}\tloaded\n"
        f"hello.service\t{hello}\tloaded\n")
    assert fleetctl("list-machines").output == (
        "MACHINE\t\tIP\t\tMETADATA\n"
        "01234567...\t10.1.2.3\tdisk=ssd,region=eu\n"
        "fedcba98...\t10.1.2.4\t-\n")
    assert fleetctl("list-machines", "-l", "--no-legend", "--fields=machine,cpus,version").output == (
        f"{MID_A}\t2\t0.1.0\n{MID_B}\t2\t0.1.0\n")
    machines = json.loads(fleetctl("list-machines", "--output", "json").output)
    assert [m["id"] for m in machines] == [MID_A, MID_B] and machines[0]["metadata"] == {"disk": "ssd", "region": "eu"}
    # metadata and drain through the API (PATCH /machines)
    assert fleetctl("set-metadata", "fedcba98", "rack=r1").exit_code == 0
    assert fleetctl("drain", "fedcba98").output == "Machine fedcba98... draining\n"
    assert fleetctl("list-machines", "--no-legend", "--fields=machine,metadata,draining").output == (
        "01234567...\tdisk=ssd,region=eu\tfalse\nfedcba98...\track=r1\t\t\ttrue\n")


@pytest.mark.parametrize(
    "body,message",
    [
        ("[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineID=abc\nConflicts=x*\n", "MachineID"),
        ("[Service\nExecStart=/bin/true\n", "bad.service"),
    ],
)
def test_bad_units_fail_with_one_line(fleetctl, server, body, message):
    write(fleetctl.work, "bad.service", body)
    r = fleetctl("submit", "bad.service")
    assert r.exit_code == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert server.run(server.registry.list_units()) == []


def test_templates_and_instances(fleetctl):
    write(fleetctl.work, "web@.service", "[Service]\nExecStart=/bin/sleep 1000\n")
    assert fleetctl("submit", "web@.service", "web@1.service").exit_code == 0
    r = fleetctl("start", "--no-block", "web@.service")
    assert r.exit_code == 1 and 'cannot activate template "web@.service"' in r.stderr
    assert fleetctl("list-unit-files", "--no-legend", "--fields=unit,dstate").output == (
        "web@.service\tinactive\nweb@1.service\tinactive\n")


def _responder(server, stop: threading.Event, machine_id: str = MID_A, ip: str = "10.1.2.3") -> threading.Thread:
    """A stand-in for engine + agent: places every unit on one machine and reports systemd
    states that follow the desired state (so fleetctl's blocking waits can complete)."""

    async def loop():
        reg = server.registry
        lease = await register_machine(reg, machine_id, ip)
        await reg.campaign(machine_id, lease)
        while not stop.is_set():
            units = await reg.list_units()
            placements = await reg.placements()
            place = [Placement(u.name, machine_id, u.hash, u.desired_state) for u in units
                     if not u.is_global and placements.get(u.name) != Placement(u.name, machine_id, u.hash, u.desired_state)]
            if place:
                await reg.apply_schedule(fence_machine_id=machine_id, place=place)
            for u in units:
                active = u.desired_state is DesiredState.LAUNCHED
                await publish_state(reg, lease, u.name, machine_id, u.hash,
                                    "active" if active else "inactive", "running" if active else "dead")
            await asyncio.sleep(0.05)

    thread = threading.Thread(target=lambda: server.run(loop(), timeout=120), daemon=True)
    thread.start()
    return thread


def test_blocking_start_stop_restart(fleetctl, server):
    write(fleetctl.work, "hello.service", HELLO)
    stop = threading.Event()
    thread = _responder(server, stop)
    try:
        r = fleetctl("start", "--block-attempts=40", "hello.service")
        assert (r.exit_code, r.output) == (0, "Unit hello.service inactive\n"
                                                 "Unit hello.service launched on 01234567.../10.1.2.3\n"), r.stderr
        r = fleetctl("restart", "--block-attempts=40", "hello.service")
        assert r.exit_code == 0, r.stderr
        assert r.output == ("Unit hello.service loaded on 01234567.../10.1.2.3\n"
                            "Unit hello.service launched on 01234567.../10.1.2.3\n")
        r = fleetctl("stop", "--block-attempts=40", "hello.service")
        assert r.exit_code == 0 and r.stdout == "Unit hello.service loaded on 01234567.../10.1.2.3\n"
        assert "Successfully stopped units [hello.service]." in r.stderr
    finally:
        stop.set()
        thread.join(10)


def test_status_and_journal_through_the_api(fleetctl, server):
    write(fleetctl.work, "hello.service", HELLO)
    write(fleetctl.work, "idle.service", HELLO)
    assert fleetctl("submit", "idle.service").exit_code == 0
    r = fleetctl("status", "idle.service")
    assert (r.exit_code, r.stderr) == (1, "Unit idle.service does not appear to be loaded.\n")
    r = fleetctl("status", "nope.service")
    assert (r.exit_code, r.stderr) == (1, "Unit nope.service does not exist.\n")
    r = fleetctl("journal", "idle.service")
    assert (r.exit_code, r.stderr) == (1, "Unit idle.service does not appear to be running.\n")
    assert fleetctl("journal", "a.service", "b.service").stderr == "One unit file must be provided.\n"
    stop = threading.Event()
    thread = _responder(server, stop)  # places units on MID_A: the server's own machine
    try:
        assert fleetctl("start", "--block-attempts=40", "hello.service").exit_code == 0
        local = subprocess.run(["systemctl", "status", "-l", "--no-pager", "hello.service"], capture_output=True, text=True)
        r = fleetctl("status", "hello.service")
        assert r.exit_code == 0 and r.output == local.stdout + local.stderr  # the real systemctl's output
        r = fleetctl("status", "--output", "json", "hello.service")
        [entry] = json.loads(r.output)
        assert entry["machineID"] == MID_A and entry["exitStatus"] == local.returncode
        r = fleetctl("journal", "--lines", "3", "hello.service")
        local = subprocess.run(["journalctl", "--unit", "hello.service", "--no-pager", "-n", "3", "--output", "short"],
                               capture_output=True, text=True)
        assert r.exit_code == 0
        assert sorted(r.output.splitlines()) == sorted((local.stdout + local.stderr).splitlines())
    finally:
        stop.set()
        thread.join(10)


def test_unreachable_endpoint_is_one_line(tmp_path):
    r = CliRunner().invoke(cli, [f"--endpoint=unix://{tmp_path}/none.sock", "list-units"])
    assert r.exit_code == 1
    assert r.stderr == f"Error: fleet API unreachable at unix://{tmp_path}/none.sock: No such file or directory\n"
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    addr = port.getsockname()
    port.close()
    r = CliRunner().invoke(cli, [f"--endpoint=http://127.0.0.1:{addr[1]}", "--request-timeout=1", "list-machines"])
    assert r.exit_code == 1 and r.stderr.startswith(f"Error: fleet API unreachable at http://127.0.0.1:{addr[1]}")
    assert len(r.stderr.strip().splitlines()) == 1


def test_fd_forward_carries_http_to_the_socket(server):
    """`fleetctl fd-forward SOCK` (what --tunnel runs remotely): stdin -> socket -> stdout."""
    sock_path = server.unix_endpoint[len("unix://"):]
    request = b"GET /fleet/v1/machines HTTP/1.1\r\nHost: domain-sock\r\nConnection: close\r\n\r\n"
    done = subprocess.run([sys.executable, "-m", "fleetctl", "fd-forward", sock_path], input=request,
                          capture_output=True, timeout=30, cwd=REPO)
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Server: fleetd/" in head
    assert json.loads(body) == {}
    done = subprocess.run([sys.executable, "-m", "fleetctl", "fd-forward", "/nonexistent.sock"], input=b"",
                          capture_output=True, timeout=30, cwd=REPO)
    assert done.returncode == 1 and b"cannot connect to /nonexistent.sock" in done.stderr


def test_help_completion_and_exit_codes_documented():
    r = CliRunner().invoke(cli, ["--help"])
    assert "Exit status:" in r.output and "130" in r.output
    for command in ("restart", "status", "journal", "ssh", "fd-forward", "help", "completion"):
        assert command in r.output
    assert "--ssh-port" in CliRunner().invoke(cli, ["help", "status"]).output
    out = CliRunner().invoke(cli, ["journal", "--help"]).output
    for flag in ("--lines", "--follow", "--output", "--sudo", "--ssh-port"):
        assert flag in out
    out = CliRunner().invoke(cli, ["ssh", "--help"]).output
    for flag in ("--machine", "--unit", "--forward-agent", "--ssh-port"):
        assert flag in out
    script = CliRunner().invoke(cli, ["completion", "bash"]).output
    assert "_FLEETCTL_COMPLETE" in script and "complete " in script
    env = dict(os.environ, _FLEETCTL_COMPLETE="bash_complete", COMP_WORDS="fleetctl list-u", COMP_CWORD="1")
    done = subprocess.run([sys.executable, "-c", "from fleetctl.cli import main; main()"], env=env,
                          capture_output=True, text=True, cwd=REPO)
    assert "list-units" in done.stdout and "list-unit-files" in done.stdout


def test_ssh_command_line(monkeypatch):
    from fleetctl.ssh import SshOptions, ssh_argv

    argv = ssh_argv(SshOptions(tunnel="bastion"), "10.0.0.5", port=2222, command=["systemctl", "status", "a b"])
    assert argv[1:3] == ["-p", "2222"] and "-J" in argv and argv[argv.index("-J") + 1] == "core@bastion:22"
    assert argv[-2:] == ["core@10.0.0.5", "systemctl status 'a b'"]
    argv = ssh_argv(SshOptions(strict_host_key_checking=False), "10.0.0.5", forward_agent=True)
    assert "StrictHostKeyChecking=no" in argv and "-A" in argv and argv[-1] == "core@10.0.0.5"
    monkeypatch.setenv("PATH", "/nonexistent")
    from fleetctl.ssh import SshError, ssh_binary

    with pytest.raises(SshError, match="ssh client is not installed"):
        ssh_binary()


# ---------------------------------------------------------------------------- fleet's Go client, replayed

GO_UA = "google-api-go-client/0.5"


def go_request(sock_path: str, method: str, target: str, body: bytes | None = None) -> http.client.HTTPResponse:
    """Send the bytes Go's net/http writes for fleetctl's API client (Host "domain-sock" over the
    unix socket, googleapi's User-Agent, ?alt=json, JSON bodies ending in a newline)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: domain-sock", f"User-Agent: {GO_UA}"]
    if body is not None:
        lines += [f"Content-Length: {len(body)}", "Content-Type: application/json"]
    lines.append("Accept-Encoding: gzip")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(sock_path)
    sock.sendall(raw)
    resp = http.client.HTTPResponse(sock, method=method)
    resp.begin()
    resp.body = resp.read()
    sock.close()
    return resp


GO_SCHEMA = {  # schema/v1-gen.go: the fields a Go client decodes, with their JSON types
    "Unit": {"currentState": str, "desiredState": str, "machineID": str, "name": str, "options": list},
    "UnitOption": {"name": str, "section": str, "value": str},
    "UnitState": {"hash": str, "machineID": str, "name": str, "systemdActiveState": str,
                  "systemdLoadState": str, "systemdSubState": str},
    "Machine": {"id": str, "metadata": dict, "primaryIP": str},
}


def go_decodes(kind: str, obj: dict) -> None:
    """What encoding/json would do: known fields must have the Go type; unknown ones are ignored."""
    for key, typ in GO_SCHEMA[kind].items():
        if key in obj:
            assert isinstance(obj[key], typ), (kind, key, obj[key])
    if kind == "Unit":
        for opt in obj.get("options", []):
            go_decodes("UnitOption", opt)
    if kind == "Machine":
        assert all(isinstance(v, str) for v in obj.get("metadata", {}).values())


def go_error(resp: http.client.HTTPResponse, code: int) -> str:
    """googleapi.CheckResponse: a non-2xx body {"error":{"code","message"}} becomes *googleapi.Error."""
    assert resp.status == code
    reply = json.loads(resp.body)
    assert reply["error"]["code"] == code and isinstance(reply["error"]["message"], str)
    return reply["error"]["message"]


def test_go_client_requests(server):
    sock = server.unix_endpoint[len("unix://"):]

    async def machines():
        lease = await register_machine(server.registry, MID_A, "10.1.2.3", {"role": "web"})
        return lease

    lease = server.run(machines())
    # CreateUnit: Units.Set(u.Name, u) with name and options (Go's struct order, omitempty)
    unit = {"desiredState": "launched", "name": "web@1.service",
            "options": [{"name": "ExecStart", "section": "Service", "value": "/bin/sleep 1000"}]}
    resp = go_request(sock, "PUT", "/fleet/v1/units/web%401.service?alt=json", json.dumps(unit, separators=(",", ":")).encode() + b"\n")
    assert resp.status == 201 and resp.getheader("Server").startswith("fleetd/")
    # SetUnitTargetState: Units.Set(name, &Unit{Name, DesiredState})
    body = b'{"desiredState":"loaded","name":"web@1.service"}\n'
    assert go_request(sock, "PUT", "/fleet/v1/units/web%401.service?alt=json", body).status == 204
    # Units(): Units.List paging
    resp = go_request(sock, "GET", "/fleet/v1/units?alt=json")
    page = json.loads(resp.body)
    assert resp.status == 200 and set(page) <= {"units", "nextPageToken"}
    for u in page["units"]:
        go_decodes("Unit", u)
    assert page["units"][0]["desiredState"] == "loaded"
    # Unit(name): 404 is turned into nil by is404()
    assert go_error(go_request(sock, "GET", "/fleet/v1/units/nope.service?alt=json"), 404) == "unit does not exist"
    resp = go_request(sock, "GET", "/fleet/v1/units/web%401.service?alt=json")
    go_decodes("Unit", json.loads(resp.body))
    # UnitStates(): UnitState.List (url.Values.Encode sorts the keys)
    server.run(publish_state(server.registry, lease, "web@1.service", MID_A, UnitFile.from_options(
        [("Service", "ExecStart", "/bin/sleep 1000")]).hash))
    resp = go_request(sock, "GET", f"/fleet/v1/state?alt=json&machineID={MID_A}&unitName=web%401.service")
    states = json.loads(resp.body)["states"]
    assert len(states) == 1
    go_decodes("UnitState", states[0])
    # Machines(): Machines.List, then a page token round trip
    resp = go_request(sock, "GET", "/fleet/v1/machines?alt=json")
    [m] = json.loads(resp.body)["machines"]
    go_decodes("Machine", m)
    assert (m["id"], m["primaryIP"], m["metadata"]) == (MID_A, "10.1.2.3", {"role": "web"})
    assert go_error(go_request(sock, "GET", "/fleet/v1/machines?alt=json&nextPageToken=EwBMLg%3D%3D"), 400) == \
        "token limit must be 100"
    # DestroyUnit: Units.Delete
    assert go_request(sock, "DELETE", "/fleet/v1/units/web%401.service?alt=json").status == 204
    assert go_error(go_request(sock, "DELETE", "/fleet/v1/units/web%401.service?alt=json"), 404) == "unit does not exist"


def test_python_client_errors_map_to_fleet_errors(server):
    async def go():
        client = ApiFleetClient(server.unix_endpoint)
        try:
            assert await client.unit("nope.service") is None
            assert await client.destroy_units(["nope.service"]) == []
            unit = Unit("a.service", UnitFile.parse(HELLO))
            assert await client.create_units([unit]) == ["a.service"]
            assert await client.create_units([unit]) == []  # exists: If-None-Match refuses to overwrite
            from fleetd.errors import UnitNotFound

            with pytest.raises(UnitNotFound, match="unit nope.service not found"):
                await client.set_desired_state(["nope.service"], DesiredState.LOADED)
        finally:
            await client.close()
        bad = ApiFleetClient("unix:///nonexistent/fleet.sock")
        try:
            with pytest.raises(ApiUnavailable, match="fleet API unreachable at unix:///nonexistent/fleet.sock"):
                await bad.units()
        finally:
            await bad.close()

    asyncio.run(go())


# ---------------------------------------------------------------------------- fleet's Python client (PyPI "fleet")

PYTHON_FLEET = r"""
import json, sys
from fleet import v1 as fleet
client = fleet.Client(sys.argv[1])   # builds itself from our /fleet/v1/discovery document
out = {}
unit = client.create_unit("pyfleet.service", fleet.Unit(from_string="[Service]\nExecStart=/bin/sleep 100\n"))
out["created"] = [unit.name, unit.desiredState, unit.currentState]
client.set_unit_desired_state("pyfleet.service", "loaded")
out["desired"] = client.get_unit("pyfleet.service").desiredState
out["units"] = [u.name for u in client.list_units()]
out["machines"] = [[m.id, m.primaryIP, m.metadata] for m in client.list_machines()]
out["states"] = [[s.name, s.machineID, s.systemdSubState] for s in client.list_unit_states()]
try:
    client.get_unit("nope.service")
except fleet.APIError as exc:
    out["error"] = [exc.code, exc.message]
client.destroy_unit("pyfleet.service")
out["after"] = [u.name for u in client.list_units()]
print(json.dumps(out))
"""


def _python_fleet_interpreter() -> str | None:
    """An interpreter with cnelson's python-fleet (PyPI `fleet` 0.1.3, needs
    google-api-python-client): $FLEET_PYCLIENT_PYTHON, else this one."""
    for exe in (os.environ.get("FLEET_PYCLIENT_PYTHON"), sys.executable):
        if exe and subprocess.run([exe, "-c", "import fleet.v1"], capture_output=True).returncode == 0:
            return exe
    return None


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_fleets_python_client(server, transport):
    exe = _python_fleet_interpreter()
    if exe is None:
        pytest.skip("python-fleet (PyPI `fleet`) not installed; set FLEET_PYCLIENT_PYTHON to a venv that has it")
    lease = server.run(register_machine(server.registry, MID_A, "10.1.2.3", {"role": "web"}))
    server.run(publish_state(server.registry, lease, "other.service", MID_A, "f" * 40))
    short = Path(tempfile.mkdtemp(prefix="pf"))
    try:
        if transport == "tcp":
            endpoint = server.tcp_endpoint
        else:  # python-fleet's scheme: the socket path, percent-encoded, as the host (<= 63 chars)
            (short / "s").symlink_to(server.unix_endpoint[len("unix://"):])
            endpoint = "http+unix://" + str(short / "s").replace("/", "%2F")
        done = subprocess.run([exe, "-c", PYTHON_FLEET, endpoint], capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(short)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["created"] == ["pyfleet.service", "launched", "inactive"]
    assert out["desired"] == "loaded" and out["units"] == ["pyfleet.service"]
    assert out["machines"] == [[MID_A, "10.1.2.3", {"role": "web"}]]
    assert out["states"] == [["other.service", MID_A, "running"]]
    assert out["error"] == [404, "unit does not exist"]
    assert out["after"] == []


def test_https_endpoint_with_client_certificates(etcd_settings, tmp_path):
    from test_api import make_pki

    pki = make_pki(tmp_path)
    tls = dict(api_cafile=pki["ca.pem"], api_certfile=pki["server.pem"], api_keyfile=pki["server.key"],
               api_insecure_tcp=False)
    (tmp_path / "srv").mkdir()
    with ThreadedApiServer(etcd_settings, tmp_path / "srv", **tls) as srv:
        srv.run(register_machine(srv.registry, MID_A, "10.1.2.3"))
        endpoint = "https://" + srv.harness.server.tcp_addresses[0]
        base = [f"--endpoint={endpoint}", f"--ca-file={pki['ca.pem']}"]
        r = CliRunner().invoke(cli, base + [f"--cert-file={pki['client.pem']}", f"--key-file={pki['client.key']}",
                                            "list-machines", "--no-legend"])
        assert (r.exit_code, r.stdout) == (0, "01234567...\t10.1.2.3\t-\n"), r.stderr
        r = CliRunner().invoke(cli, base + ["list-machines"])  # no client certificate: refused
        assert r.exit_code == 1 and r.stderr.startswith(f"Error: fleet API unreachable at {endpoint}")
        assert len(r.stderr.strip().splitlines()) == 1


def test_progress_line_only_when_enabled():
    import io

    from fleetctl.progress import Progress

    quiet = io.StringIO()
    p = Progress(3, "launched", stream=quiet, enabled=False)
    p.update(1)
    p.clear()
    assert quiet.getvalue() == ""
    shown = io.StringIO()
    p = Progress(3, "launched", stream=shown, enabled=True)
    p.update(1)
    p.clear()
    assert shown.getvalue() == "\r\x1b[KWaiting for units to be launched: 1/3\r\x1b[K"
    assert Progress(3, "launched").enabled is False  # pytest's stdout is not a terminal


def test_waits_without_a_change_feed_poll_fast_first_then_back_off():
    import itertools

    from fleetctl.client import FAST_POLL, FAST_POLL_FOR, poll_delays

    delays = list(itertools.islice(poll_delays(0.25, fast_start=True), 40))
    fast = [d for d in delays if d == FAST_POLL]
    assert len(fast) == int(FAST_POLL_FOR / FAST_POLL) and delays[:len(fast)] == fast
    backoff = delays[len(fast):]
    assert backoff[:3] == [0.05, 0.1, 0.2] and set(backoff[3:]) == {0.25}
    # with an etcd watch waking the wait, the poll is only a safety net
    assert list(itertools.islice(poll_delays(0.25, fast_start=False), 5)) == [0.25] * 5
    # a caller asking for a faster poll than the fast start gets it throughout
    assert list(itertools.islice(poll_delays(0.01, fast_start=True), 5)) == [0.01] * 5
