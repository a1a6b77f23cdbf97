"""fleetctl's etcd fast path (fleetctl/fast_etcd.py over fleetd/registry/gateway.py): the same
command lines go to two identical clusters — two key prefixes on one real etcd, each with a
stand-in for the engine and an agent that places units and reports states following their
desired state — once through `python -m fleetctl --driver=etcd` (the fast path) and once
through the full CLI's etcd driver; stdout, stderr, exit codes and the jobs and bodies left in
etcd must be the same, the fast runs must import none of aetcd, gRPC, asyncio, click or the
full CLI, and what the fast path does not know (templates, --replace, another body, [X-Fleet],
an etcd without a gateway answer...) must be left to the full CLI (which the control then shows
imported). TLS with client certificates: the fast path over the standard library's ssl; with
etcd's auth on, etcd refuses the certificate's CN through its gateway and the full CLI does it."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import threading
import urllib.request
import uuid
from pathlib import Path

import pytest

from fleetd.config import EtcdSettings
from fleetlab.testing.etcd import EtcdServer

from _fast_cli_common import (PLAIN, env_without_fleetctl_settings as _env, imported,
                              no_block_load_then_start_by_name_and_submit,
                              stand_in, timeout_and_destroy_messages, without_importtime, write_units)
from _forked_cli import ForkedCli, shared, shared_fast_path

NEVER_ON_THE_FAST_PATH = ("click", "fleetctl.cli", "fleetctl.commands", "fleetctl.api_client", "fleetctl.client",
                          "fleetctl.etcd_client", "aetcd", "grpc", "google", "asyncio", "fleetd.model", "fleetd.unit",
                          "fleetd.config", "fleetd.registry.connection", "fleetd.registry.core",
                          "fleetd.registry.registry", "fleetd.registry.codec", "http", "email", "dataclasses",
                          "typing", "threading", "concurrent")
FULL_CLI = "import sys; from fleetctl.cli import main; sys.argv[0] = 'fleetctl'; main()"


def forbidden(names: set[str], extra: tuple[str, ...] = ()) -> list[str]:
    return sorted(n for n in names if any(n == r or n.startswith(r + ".") for r in NEVER_ON_THE_FAST_PATH + extra))


def _responder(settings: EtcdSettings, stop: threading.Event) -> threading.Thread:
    """The engine and agent stand-in (_fast_cli_common.stand_in) on a connection of its own."""

    async def loop():
        from fleetd.registry import Registry

        reg = await Registry.connect(settings)
        try:
            await stand_in(reg, stop)
        finally:
            await reg.close()

    thread = threading.Thread(target=lambda: asyncio.run(loop()), daemon=True)
    thread.start()
    return thread


class Side:
    def __init__(self, endpoint: str, prefix: str, tls_args: tuple[str, ...] = ()):
        self.endpoint, self.prefix, self.tls_args = endpoint, prefix, tls_args

    def args(self) -> list[str]:
        return ["--driver=etcd", f"--endpoint={self.endpoint}", f"--etcd-key-prefix={self.prefix}", *self.tls_args]


class Clusters(tuple):
    """(the etcd server, [the fast path's side, the full CLI's side]), and `cli`: the full CLI's
    fork server (tests/_forked_cli.py: a process per run, the imports done once)."""

    cli: ForkedCli

    def like(self, value: tuple) -> "Clusters":
        """Other sides, the same fork server."""
        other = Clusters(value)
        other.cli = self.cli
        return other


@pytest.fixture(scope="module")
def full_cli():
    """The full CLI's fork server (tests/_forked_cli.py, the worker's shared one: its etcd
    driver, aetcd and gRPC, imported before forking)."""
    return shared()


@pytest.fixture(scope="module")
def clusters(etcd_server, full_cli):
    """Two clusters (separate key prefixes, one etcd): the fast path's and the full CLI's."""
    stop = threading.Event()
    threads, sides = [], []
    cli = full_cli
    try:
        for side in ("fast", "full"):
            prefix = f"/fast-etcd/{side}-{uuid.uuid4().hex[:8]}/"
            settings = EtcdSettings(endpoints=(etcd_server.endpoint,), key_prefix=prefix, request_timeout=5.0)
            threads.append(_responder(settings, stop))
            sides.append(Side(etcd_server.endpoint, prefix))
        found = Clusters((etcd_server, sides))
        found.cli = cli
        yield found
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


@pytest.fixture
def work(tmp_path):
    return tmp_path


def registry_keys(endpoint: str, prefix: str, what=("job/", "unit/")) -> dict[str, bytes]:
    """The keys and values below prefix+what, read through etcd's gateway with urllib (plain
    etcd), relative to the prefix."""
    found = {}
    for sub in what:
        key = (prefix + sub).encode()
        end = key[:-1] + bytes([key[-1] + 1])
        body = json.dumps({"key": base64.b64encode(key).decode(), "range_end": base64.b64encode(end).decode()})
        with urllib.request.urlopen(urllib.request.Request(f"{endpoint}/v3/kv/range", body.encode()), timeout=10) as r:
            for kv in json.loads(r.read()).get("kvs") or []:
                found[base64.b64decode(kv["key"]).decode()[len(prefix):]] = base64.b64decode(kv.get("value", ""))
    return found


def both(clusters, work: Path, *args: str, cold: bool = True) -> tuple:
    """Run `fleetctl ARGS` with the fast entry point on one cluster and the full CLI on the other
    (cwd `work`); returns both CompletedProcesses. The fast entry point's run is
    `python -X importtime -m fleetctl` forked from a bare interpreter (tests/_forked_cli.py's
    ForkedFastPath: its imports all its own, logged), or with `cold=False` (a run it hands over
    to the full CLI) forked from the full CLI's fork server (entry "fast")."""
    _, (fast, full) = clusters
    if cold:
        quick = shared_fast_path().run([*fast.args(), *args], timeout=120, cwd=work, env=_env())
    else:
        quick = clusters.cli.run([*fast.args(), *args], timeout=120, cwd=work, env=_env(), entry="fast")
    slow = clusters.cli.run([*full.args(), *args], timeout=120, cwd=work, env=_env())
    return quick, slow


def waited(stdout: str) -> tuple[str, list[str]]:
    """The output before the first result of the wait, and the wait's lines in sorted order."""
    lines = stdout.splitlines(keepends=True)
    first = next((i for i, line in enumerate(lines) if " launched on " in line or " loaded on " in line), len(lines))
    return "".join(lines[:first]), sorted(lines[first:])


def same(clusters, work, *args, fast_path=True, stderr=True) -> subprocess.CompletedProcess:
    """The same output, exit code and keys left in etcd from the fast entry point and the full
    CLI; `fast_path`: the fast path answers (a cold run: none of NEVER_ON_THE_FAST_PATH
    imported), or it hands over to the full CLI (a forked run: `handed_over`; the cold
    hand-overs are test_a_record_it_cannot_read_is_left_to_the_full_cli's, the unreachable
    endpoint's and the TLS outsider's)."""
    quick, slow = both(clusters, work, *args, cold=fast_path)
    assert (quick.returncode, waited(quick.stdout)) == (slow.returncode, waited(slow.stdout)), args
    if stderr:  # (--debug's logs name objects by address)
        assert without_importtime(quick.stderr) == slow.stderr, args
    if len(waited(quick.stdout)[1]) <= 1:
        assert quick.stdout == slow.stdout
    if fast_path:
        names = imported(quick.stderr)
        assert "fleetctl.fast_etcd" in names and forbidden(names, ("ssl",)) == [], (args, forbidden(names))
    else:
        assert quick.handed_over, args
    server, (fast, full) = clusters
    assert registry_keys(server.endpoint, fast.prefix) == registry_keys(server.endpoint, full.prefix), args
    return quick


def test_start_new_units_blocking_and_again(clusters, work):
    write_units(work, ["one.service", "two.service"])
    out = same(clusters, work, "start", "one.service")
    assert out.returncode == 0 and out.stdout == (
        "Unit one.service inactive\nUnit one.service launched on 01234567.../10.1.2.3\n")
    assert same(clusters, work, "start", "one.service", "two.service").stdout == (  # one exists (same body)
        "Unit two.service inactive\nUnit two.service launched on 01234567.../10.1.2.3\n")
    assert same(clusters, work, "start", "one").stdout == ""  # by name, already launched: nothing to do


def test_no_block_load_then_start_by_name_and_submit(clusters, work):
    no_block_load_then_start_by_name_and_submit(same, clusters, work)


def test_stop_waits_for_loaded_and_says_so(clusters, work):
    names = ["st1.service", "st2.service"]
    write_units(work, [*names, "st3.service"])
    same(clusters, work, "start", *names)
    out = same(clusters, work, "stop", "--block-attempts=40", *names, "st-unknown.service")
    assert sorted(out.stdout.splitlines()) == [f"Unit {n} loaded on 01234567.../10.1.2.3" for n in names]
    assert out.stderr.endswith("Successfully stopped units [st1.service st2.service].\n")
    out = same(clusters, work, "stop", "st1")  # loaded already: nothing set, nothing waited for
    assert out.stdout == "" and out.stderr.endswith("Successfully stopped units [].\n")
    same(clusters, work, "start", "st1.service")
    assert same(clusters, work, "stop", "--no-block", "st1.service").stdout == "Triggered unit st1.service stop\n"
    assert same(clusters, work, "stop", "st-unknown.service").stderr.endswith("Units not found in registry\n")
    write_units(work, ["st@.service"])
    same(clusters, work, "submit", "st@.service", fast_path=False)  # templates: the full CLI
    out = same(clusters, work, "stop", "st@.service", fast_path=False)  # a template: the full CLI's error
    assert out.returncode == 1 and "Unable to stop unit st@.service" in out.stderr
    same(clusters, work, "submit", "st3.service")
    out = same(clusters, work, "stop", "st3.service", fast_path=False)  # inactive: the full CLI's error
    assert out.returncode == 1 and "Unable to stop unit st3.service in state inactive" in out.stderr


def test_many_units_in_batches(clusters, work):
    names = [f"many{i:02d}.service" for i in range(65)]  # more than one transaction's worth (60)
    write_units(work, names)
    out = same(clusters, work, "start", *names)
    assert out.returncode == 0 and out.stdout.count(" launched on 01234567.../10.1.2.3\n") == 65
    out = same(clusters, work, "destroy", *names, "never-was.service")
    assert out.stdout == "".join(f"Destroyed {n}\n" for n in names)


def test_timeout_and_destroy_messages(clusters, work):
    timeout_and_destroy_messages(same, clusters, work)


def test_unit_files_the_quick_parser_reads(clusters, work):
    (work / "text.service").write_text(
        "# a comment \\\nswallowed=line\n[Unit]\nDescription=  caf\u00e9 <&> \u2003\n; other\n\n"
        "[Service]\nExecStart=/bin/sh -c \\\n   'sleep 1000' \\\n\nEnvironment=A=1\n[Unit]\nAfter=x.service\n")
    out = same(clusters, work, "start", "text.service")
    assert out.stdout.endswith("Unit text.service launched on 01234567.../10.1.2.3\n")


@pytest.mark.parametrize("case", [
    "replace", "instance", "other-body", "x-fleet", "crlf", "missing", "bad-name", "sign", "help", "template",
    "dash-dash", "debug", "api-driver-flag"])
def test_what_the_fast_path_leaves_to_the_full_cli(clusters, work, case):
    name = f"fb-{case}.service"
    write_units(work, [name])
    args = ["start", "--block-attempts=40", name]
    if case == "replace":
        args.insert(1, "--replace")
    elif case in ("instance", "template"):
        write_units(work, ["fbt@.service"])
        args[-1] = "fbt@1.service" if case == "instance" else "fbt@.service"
    elif case == "other-body":
        same(clusters, work, "submit", name)
        write_units(work, [name], PLAIN + "Restart=always\n")
    elif case == "x-fleet":
        write_units(work, [name], PLAIN + "\n[X-Fleet]\nMachineMetadata=region=eu\n")
    elif case == "crlf":
        (work / name).write_bytes(PLAIN.format(name=name).replace("\n", "\r\n").encode())
    elif case == "missing":
        args[-1] = "fb-not-here.service"
    elif case == "bad-name":
        args[-1] = "fb bad.service"
    elif case == "sign":
        args.insert(1, "--sign")
    elif case == "help":
        args.append("--help")
    elif case == "dash-dash":
        args = ["start", "--", name]
    elif case == "debug":
        args.insert(0, "--debug")
    elif case == "api-driver-flag":  # the last --driver wins: the API driver (no socket there)
        args.insert(0, "--driver=api")
    same(clusters, work, *args, fast_path=False, stderr=case != "debug")


def test_no_gateway_answer_before_any_write_is_the_full_clis_error(tmp_path):
    """Nothing listening: the fast path writes nothing and says nothing; the full CLI's error."""
    write_units(tmp_path, ["u.service"])
    from fleetlab.testing.etcd import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    runs = [subprocess.run([sys.executable, "-X", "importtime", *how, "--driver=etcd", f"--endpoint={endpoint}",
                            "--request-timeout=1", "start", "u.service"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_env())
            for how in (["-m", "fleetctl"], ["-c", FULL_CLI])]
    assert runs[0].returncode == runs[1].returncode == 1
    assert without_importtime(runs[0].stderr) == without_importtime(runs[1].stderr)
    assert "fleetctl.cli" in imported(runs[0].stderr)


def test_the_default_endpoint_port_picks_etcd(clusters, work):
    """Without --driver an endpoint on port 2379 is the etcd driver's (fleet's rule): the fast
    path follows it (it reads that the flag is absent, not that the port is 2379)."""
    from fleetctl.fast_etcd import etcd_settings

    conf, rest = etcd_settings(["--endpoint=http://10.0.0.1:2379", "start", "x"], {})
    assert conf["endpoint"] == "http://10.0.0.1:2379" and rest == ["start", "x"]
    assert conf["prefix"] == "/_coreos.com/fleet/" and conf["timeout"] == 3.0
    assert etcd_settings(["--endpoint=http://10.0.0.1:8080", "start", "x"], {}) is None
    conf, _ = etcd_settings(["--driver", "ETCD", "start", "x"], {"FLEETCTL_ETCD_KEY_PREFIX": "p",
                                                                  "FLEETCTL_REQUEST_TIMEOUT": "7"})
    assert (conf["endpoint"], conf["prefix"], conf["timeout"]) == ("http://127.0.0.1:2379", "/p/", 7.0)
    assert etcd_settings(["--driver=etcd", "--ca-file=/x", "start", "x"], {}) is None  # TLS over http://
    assert etcd_settings(["--driver=etcd", "--request-timeout=0", "start", "x"], {}) is None


# ---------------------------------------------------------------------------- TLS


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_cert(d: Path, name: str, usage: str, san: str | None = None) -> None:
    (d / f"{name}.ext").write_text(f"extendedKeyUsage={usage}\n" + (f"subjectAltName={san}\n" if san else ""))
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=ca", "-keyout", "ca.key",
            "-out", "ca.crt", cwd=d)
    make_cert(d, "server", "serverAuth,clientAuth", "IP:127.0.0.1")
    for user in ("root", "operator", "outsider"):
        make_cert(d, user, "clientAuth")
    with EtcdServer(tls=(str(d / "ca.crt"), str(d / "server.crt"), str(d / "server.key"))) as server:
        yield server, d


FAST = ["-m", "fleetctl"]  # `how` of tls_run: the fast entry point, forked bare (tests/_forked_cli.py)


def tls_run(server, d: Path, work: Path, how: list[str] | ForkedCli, prefix: str, *args: str,
            cert: str = "root") -> subprocess.CompletedProcess:
    """`how`: FAST (`python -X importtime -m fleetctl` forked from a bare interpreter:
    tests/_forked_cli.py's ForkedFastPath), or the full CLI's fork server (the reference: a
    process per run, the imports done once)."""
    argv = ["--driver=etcd", f"--endpoint={server.endpoint}", f"--etcd-key-prefix={prefix}", f"--ca-file={d / 'ca.crt'}",
            f"--cert-file={d / f'{cert}.crt'}", f"--key-file={d / f'{cert}.key'}", *args]
    if isinstance(how, ForkedCli):
        return how.run(argv, timeout=120, cwd=work, env=_env())
    assert how == FAST
    return shared_fast_path().run(argv, timeout=120, cwd=work, env=_env())


def test_tls_with_client_certificates_then_with_etcd_auth(tls_etcd, full_cli, tmp_path):
    """Over https with a client certificate the fast path speaks etcd's gRPC API itself
    (fleetd/registry/grpc_lite.py: ssl is then its one more import), before and after etcd's
    auth is turned on with certificate users (whom etcd's JSON gateway would refuse): the same
    output as the full CLI, and a user whose role does not cover the prefix is refused before
    any write, so the full CLI says why."""
    server, d = tls_etcd
    write_units(tmp_path, ["t1.service", "t2.service"])
    commands = (("start", "--no-block", "t1.service"), ("submit", "t2.service"), ("stop", "--no-block", "t1"),
                ("start", "--no-block", "t2"), ("destroy", "t1.service", "t2"))

    def compare(tag: str, cert: str = "root") -> None:
        runs = {side: [tls_run(server, d, tmp_path, how, f"/fast-etcd-tls/{tag}/{side}/", *args, cert=cert)
                       for args in commands]
                for side, how in (("fast", FAST), ("full", full_cli))}
        for quick, slow in zip(runs["fast"], runs["full"]):
            assert (quick.returncode, quick.stdout, without_importtime(quick.stderr)) == (
                slow.returncode, slow.stdout, without_importtime(slow.stderr))
            names = imported(quick.stderr)
            assert "fleetctl.fast_etcd" in names and "fleetd.registry.grpc_lite" in names and "ssl" in names
            assert forbidden(names) == []
        assert runs["fast"][0].stdout == "Unit t1.service inactive\nTriggered unit t1.service start\n"
        assert runs["fast"][4].stdout == "Destroyed t1.service\nDestroyed t2.service\n"

    compare("plain")
    # a blocking start: the wait sleeps in etcd's Watch stream on the same HTTP/2 connection
    stop = threading.Event()
    prefixes = {side: f"/fast-etcd-tls/blocking/{side}/" for side in ("fast", "full")}
    threads = [_responder(EtcdSettings(endpoints=(server.endpoint,), key_prefix=prefix, request_timeout=5.0,
                                       cafile=str(d / "ca.crt"), certfile=str(d / "root.crt"),
                                       keyfile=str(d / "root.key")), stop) for prefix in prefixes.values()]
    try:
        quick, slow = (tls_run(server, d, tmp_path, how, prefixes[side], "start", "--block-attempts=60", "t1.service")
                       for side, how in (("fast", FAST), ("full", full_cli)))
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert (quick.returncode, quick.stdout, without_importtime(quick.stderr)) == (
        slow.returncode, slow.stdout, without_importtime(slow.stderr))
    assert quick.stdout == "Unit t1.service inactive\nUnit t1.service launched on 01234567.../10.1.2.3\n"
    assert "fleetd.registry.grpc_lite" in imported(quick.stderr) and forbidden(imported(quick.stderr)) == []
    ctl = ["etcdctl", f"--endpoints={server.endpoint}", f"--cacert={d / 'ca.crt'}", f"--cert={d / 'root.crt'}",
           f"--key={d / 'root.key'}"]
    for args in (("role", "add", "fleet"), ("role", "grant-permission", "fleet", "--prefix=true", "readwrite",
                                            "/fast-etcd-tls/"),
                 ("user", "add", "root", "--no-password"), ("user", "grant-role", "root", "root"),
                 ("user", "add", "operator", "--no-password"), ("user", "grant-role", "operator", "fleet"),
                 ("user", "add", "outsider", "--no-password"), ("auth", "enable")):
        subprocess.run([*ctl, *args], check=True, capture_output=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    compare("auth", cert="operator")
    runs = [tls_run(server, d, tmp_path, how, "/fast-etcd-tls/outside/", "start", "--no-block", "t1.service",
                    cert="outsider") for how in (FAST, full_cli)]
    assert runs[0].returncode == runs[1].returncode == 1 and "permission denied" in runs[1].stderr
    assert without_importtime(runs[0].stderr) == without_importtime(runs[1].stderr)
    assert "fleetctl.cli" in imported(runs[0].stderr)  # refused before any write: the full CLI said why


def test_a_record_it_cannot_read_is_left_to_the_full_cli(clusters, work):
    """A job record that is not the registry's JSON (written around fleet): the fast path writes
    nothing and the full CLI does whatever it does with it."""
    server, _ = clusters
    fast, full = (Side(server.endpoint, f"/fast-etcd/garbled-{side}-{uuid.uuid4().hex[:8]}/") for side in "ab")
    clusters = clusters.like((server, (fast, full)))  # prefixes of their own: the stand-in agents would trip on it
    for side in (fast, full):
        key = (side.prefix + "job/garbled.service").encode()
        body = json.dumps({"key": base64.b64encode(key).decode(), "value": base64.b64encode(b"{not json").decode()})
        urllib.request.urlopen(urllib.request.Request(f"{server.endpoint}/v3/kv/put", body.encode()), timeout=10).read()
    write_units(work, ["garbled.service"])
    for args in (("start", "--no-block", "garbled.service"), ("destroy", "garbled.service")):
        quick, slow = both(clusters, work, *args)
        assert "fleetctl.cli" in imported(quick.stderr), args  # (today the full CLI fails with a traceback)
        last = [without_importtime(p.stderr).strip().splitlines()[-1:] for p in (quick, slow)]
        assert (quick.returncode, quick.stdout, last[0]) == (slow.returncode, slow.stdout, last[1]), args


@pytest.mark.parametrize("transport", ["gateway", "grpc"])
def test_unit_gateway_writes_as_the_registry_does(etcd_server, transport):
    """UnitGateway on both transports against the registry proper: a unit created meanwhile by
    someone else is left alone (the slow path), a desired state set with a stale `created`
    record is read again and set (a lost compare-and-swap), and the registry reads back what
    it wrote."""
    from fleetd.registry.gateway import Gateway, UnitGateway
    from fleetd.registry.grpc_lite import GrpcTransport
    from fleetctl.quickunit import quick_options, serialize, unit_hash

    prefix = f"/fast-etcd/gw-{uuid.uuid4().hex[:8]}/"
    make = Gateway if transport == "gateway" else GrpcTransport
    reg = UnitGateway(make(etcd_server.endpoint, 5.0), prefix)
    options = quick_options(PLAIN.format(name="x").encode())
    text, h = serialize(options), unit_hash(options)
    try:
        assert list(reg.create_units([("a.service", h, text)])) == ["a.service"]
        created = reg.create_units([("a.service", h, text), ("b.service", h, text)])  # a exists: one by one
        assert list(created) == ["b.service"]
        reg.set_desired_state(["a.service", "b.service"], "launched", {"b.service": (h, created["b.service"][1] - 1)})
        revision, jobs, states, machines = reg.read_units(["a.service", "b.service", "c.service"], machines=True)
        assert revision > 0 and machines == {} and states == {"a.service": [], "b.service": []}
        assert {n: j["desiredState"] for n, j in jobs.items()} == {"a.service": "launched", "b.service": "launched"}
        assert reg.bodies([h]) == {h: text.encode()}

        async def registry_view():
            from fleetd.registry import Registry

            async with await Registry.connect(EtcdSettings(endpoints=(etcd_server.endpoint,), key_prefix=prefix)) as r:
                return {u.name: (u.hash, u.desired_state.value) for u in await r.list_units()}

        assert asyncio.run(registry_view()) == {"a.service": (h, "launched"), "b.service": (h, "launched")}
        with pytest.raises(Exception, match="unit c.service not found"):
            reg.set_desired_state(["a.service", "c.service"], "loaded")
        assert reg.destroy_units(["a.service", "c.service", "b.service"]) == ["a.service", "b.service"]
    finally:
        reg.close()


def test_a_member_that_is_down_first_in_the_list(clusters, work):
    """`--endpoint=DEAD,LIVE`: as the full CLI's gRPC channel, the fast path uses the first
    member that takes the connection."""
    from fleetlab.testing.etcd import free_port

    server, (fast, full) = clusters
    dead = f"http://127.0.0.1:{free_port()}"
    sides = tuple(Side(f"{dead},{side.endpoint}", side.prefix) for side in (fast, full))
    write_units(work, ["second.service"])
    out = same(clusters.like((server, sides)), work, "start", "second.service")
    assert out.stdout == "Unit second.service inactive\nUnit second.service launched on 01234567.../10.1.2.3\n"
