"""fleetctl's fast path for submit/load/start/destroy (fleetctl/fast_units.py): the same command
lines go to two identical clusters — each a real fleetd API on real etcd, with a stand-in for
the engine and an agent that places units and reports states following their desired state —
once through `python -m fleetctl` (the fast path) and once through the full CLI; stdout,
stderr and exit codes must be byte for byte the same, the fast runs must import none of the
full CLI's modules, and what the fast path does not know (templates, --replace, another body in
the registry, [X-Fleet], CRLF files, errors before any write...) must be left to the full CLI
(which the control then shows imported)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from fleetd.config import EtcdSettings
from fleetd.model import Machine

from _api_server import ThreadedApiServer
from _fast_cli_common import (MID, PLAIN, env_without_fleetctl_settings as _env, imported,
                              no_block_load_then_start_by_name_and_submit,
                              stand_in, timeout_and_destroy_messages, without_importtime, write_units)
from _forked_cli import ForkedCli, shared, shared_fast_path

REPO = Path(__file__).resolve().parents[2]
NEVER_ON_THE_FAST_PATH = ("click", "fleetd", "fleetctl.cli", "fleetctl.commands", "fleetctl.api_client",
                          "fleetctl.client", "http", "email", "ssl", "asyncio", "dataclasses", "threading",
                          "concurrent")


def forbidden(names: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == r or n.startswith(r + ".") for r in NEVER_ON_THE_FAST_PATH))


def _responder(server: ThreadedApiServer, stop: threading.Event) -> threading.Thread:
    """The engine and agent stand-in (_fast_cli_common.stand_in) in the API server's loop."""
    thread = threading.Thread(target=lambda: server.run(stand_in(server.registry, stop), timeout=600), daemon=True)
    thread.start()
    return thread


class Clusters(list):
    """[the fast path's server, the full CLI's server], and `cli`: the full CLI's fork server
    (tests/_forked_cli.py: a process per run, the imports done once)."""

    cli: ForkedCli


@contextlib.contextmanager
def serving_clusters(etcd_server, tmp_path_factory, prefix: str, **server_options):
    """Two clusters (separate key prefixes below `prefix`, same machine, the stand-in answering
    on each): the fast path's and the full CLI's; `server_options` for ThreadedApiServer (TLS)."""
    servers = Clusters()
    servers.cli = shared()  # the worker's full-CLI fork server (tests/_forked_cli.py)
    stop = threading.Event()
    threads = []
    try:
        for side in ("fast", "full"):
            settings = EtcdSettings(endpoints=(etcd_server.endpoint,), key_prefix=f"/{prefix}/{uuid.uuid4().hex[:8]}/",
                                    request_timeout=5.0)
            srv = ThreadedApiServer(settings, tmp_path_factory.mktemp(side), Machine(MID, "10.1.2.3"), **server_options)
            servers.append(srv.__enter__())
            threads.append(_responder(srv, stop))
        yield servers
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        for srv in servers:
            srv.__exit__(None, None, None)


@pytest.fixture(scope="module")
def clusters(etcd_server, tmp_path_factory):
    with serving_clusters(etcd_server, tmp_path_factory, "fast-units") as servers:
        yield servers


@pytest.fixture
def work(tmp_path):
    return tmp_path


def both(clusters, work: Path, *args: str, endpoint: str = "unix", cold: bool = True) -> tuple:
    """Run `fleetctl ARGS` with the fast entry point on one cluster and the full CLI on the other
    (cwd `work`); returns both CompletedProcesses. The fast entry point's run is
    `python -X importtime -m fleetctl` forked from a bare interpreter (tests/_forked_cli.py's
    ForkedFastPath: its imports all its own, logged), or with `cold=False` (a run it hands over
    to the full CLI) forked from the full CLI's fork server (entry "fast")."""
    fast_srv, full_srv = clusters

    def where(srv):
        return srv.unix_endpoint if endpoint == "unix" else srv.tcp_endpoint

    if cold:
        quick = shared_fast_path().run([f"--endpoint={where(fast_srv)}", *args], timeout=120, cwd=work, env=_env())
    else:
        quick = clusters.cli.run([f"--endpoint={where(fast_srv)}", *args], timeout=120, cwd=work, env=_env(),
                                 entry="fast")
    slow = clusters.cli.run([f"--endpoint={where(full_srv)}", *args], timeout=120, cwd=work, env=_env())
    return quick, slow


def waited(stdout: str) -> tuple[str, list[str]]:
    """The output before the first result of the wait, and the wait's lines in sorted order: units
    reach their state in an order of their own (each run prints them as its checks see them)."""
    lines = stdout.splitlines(keepends=True)
    first = next((i for i, line in enumerate(lines) if " launched on " in line or " loaded on " in line), len(lines))
    return "".join(lines[:first]), sorted(lines[first:])


def same(clusters, work, *args, endpoint="unix", fast_path=True) -> subprocess.CompletedProcess:
    """The same output and exit code from the fast entry point and the full CLI; `fast_path`:
    the fast path answers (a cold run: none of the full CLI's modules imported), or it hands
    over to the full CLI (a forked run: `handed_over`; the cold hand-over is
    test_unreachable_api_before_any_write_is_the_full_clis_error's)."""
    quick, slow = both(clusters, work, *args, endpoint=endpoint, cold=fast_path)
    assert (quick.returncode, waited(quick.stdout), without_importtime(quick.stderr)) == (
        slow.returncode, waited(slow.stdout), slow.stderr), args
    if len(waited(quick.stdout)[1]) <= 1:
        assert quick.stdout == slow.stdout
    if fast_path:
        names = imported(quick.stderr)
        assert "fleetctl.fast_units" in names and forbidden(names) == [], (args, forbidden(names))
    else:
        assert quick.handed_over, args
    return quick


def test_start_new_units_blocking_and_again(clusters, work):
    write_units(work, ["one.service", "two.service"])
    out = same(clusters, work, "start", "one.service")
    assert out.returncode == 0 and out.stdout == (
        "Unit one.service inactive\nUnit one.service launched on 01234567.../10.1.2.3\n")
    assert same(clusters, work, "start", "one.service", "two.service").stdout == (  # one exists (same body)
        "Unit two.service inactive\nUnit two.service launched on 01234567.../10.1.2.3\n")
    assert same(clusters, work, "start", "one").stdout == ""  # by name, already launched: nothing to do
    same(clusters, work, "start", "two.service", endpoint="tcp")


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
    same(clusters, work, "submit", "st3.service")
    out = same(clusters, work, "stop", "st3.service", fast_path=False)  # inactive: the full CLI's error
    assert out.returncode == 1 and "Unable to stop unit st3.service in state inactive" in out.stderr


def test_many_units_in_one_start_use_the_list(clusters, work):
    names = [f"many{i:02d}.service" for i in range(55)]  # more than 50: the wait lists /units
    write_units(work, names)
    out = same(clusters, work, "start", *names)
    assert out.returncode == 0 and out.stdout.count(" launched on 01234567.../10.1.2.3\n") == 55
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
    assert same(clusters, work, "list-unit-files", "--no-legend", "--fields=unit,hash", fast_path=False).stdout


@pytest.mark.parametrize("case", [
    "replace", "instance", "other-body", "x-fleet", "crlf", "missing", "bad-name", "duplicate", "sign", "help",
    "no-units", "template", "dash-dash"])
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
        write_units(work, [name], PLAIN + "\n[X-Fleet]\nMachineMetadata=region=eu\nBogus=1\n")
    elif case == "crlf":
        (work / name).write_bytes(PLAIN.format(name=name).replace("\n", "\r\n").encode())
    elif case == "missing":
        args[-1] = "fb-not-here.service"
    elif case == "bad-name":
        args[-1] = "fb bad.service"
    elif case == "duplicate":
        args.append(f"./{name}")
    elif case == "sign":
        args.insert(1, "--sign")
    elif case == "help":
        args.append("--help")
    elif case == "no-units":
        args = ["start"]
    elif case == "dash-dash":
        args = ["start", "--", name]
    same(clusters, work, *args, fast_path=False)


def test_unreachable_api_before_any_write_is_the_full_clis_error(tmp_path):
    write_units(tmp_path, ["u.service"])
    for endpoint in (f"unix://{tmp_path}/nothing.sock", "http://127.0.0.1:9"):
        runs = [subprocess.run([sys.executable, *how, f"--endpoint={endpoint}", "start", "u.service"],
                               capture_output=True, text=True, timeout=60, cwd=tmp_path, env=_env())
                for how in (["-m", "fleetctl"], ["-c", "from fleetctl.cli import main; main()"])]
        assert runs[0].returncode == runs[1].returncode == 1
        assert runs[0].stderr == runs[1].stderr and "fleet API unreachable at" in runs[0].stderr


def test_units_named_in_one_request_beyond_fleet(clusters, work):
    """GET /units?unitName=...: the named units in the order asked, unknown and invalid names left
    out; both clients ask in chunks of at most QUERY_LIMIT characters and filter what comes back."""
    from fleetctl.api_client import ApiFleetClient
    from fleetctl.commands.common import run_without_loop
    from fleetctl.fast_http import Api, locate, name_chunks

    fast_srv, _ = clusters
    names = [f"named-{i:03d}-{'x' * 40}.service" for i in range(120)]
    write_units(work, names)
    assert same(clusters, work, "submit", *names).returncode == 0
    api = Api(locate({"endpoint": fast_srv.unix_endpoint, "driver": "", "timeout": "5"}))
    asked = ["nope.service", names[7], "bad name", names[3], names[7]]
    status, raw = api.one("GET", "/fleet/v1/units?" + "&".join(f"unitName={n}" for n in asked).replace(" ", "%20"))
    import json

    assert status == 200 and [u["name"] for u in json.loads(raw)["units"]] == [names[7], names[3]]
    assert api.one("GET", "/fleet/v1/units?unitName=nope.service") == (200, b"{}")
    wanted = list(reversed(names)) + ["nope.service"]
    assert len(name_chunks(wanted)) > 1
    assert list(api.units_named(wanted)) == list(reversed(names))
    client = ApiFleetClient(fast_srv.unix_endpoint)
    try:
        infos = run_without_loop(client.units_named(wanted))
    finally:
        run_without_loop(client.close())
    assert [u.name for u in infos] == list(reversed(names)) and all(u.desired_state.value == "inactive" for u in infos)
    assert same(clusters, work, "destroy", *names).stdout.count("Destroyed ") == 120


def test_a_lone_new_unit_is_created_without_a_read_first(clusters, work):
    """`start --no-block X.service` of a new unit: one create-only PUT and nothing else (the
    lookup comes only after a 412); of an existing one: the PUT's 412, then the lookup."""
    write_units(work, ["lone.service"])
    requests = clusters[0].harness.server.metrics.requests
    before = dict(requests)
    out = same(clusters, work, "start", "--no-block", "lone.service")
    assert out.stdout == "Unit lone.service inactive\nTriggered unit lone.service start\n"
    added = {k: v - before.get(k, 0) for k, v in requests.items() if v != before.get(k, 0)}
    assert added == {("PUT", "201"): 1}, added
    before = dict(requests)
    assert same(clusters, work, "start", "--no-block", "lone.service").stdout == ""  # launched already
    added = {k: v - before.get(k, 0) for k, v in requests.items() if v != before.get(k, 0)}
    assert added[("PUT", "412")] == 1 and added[("GET", "200")] >= 1, added


def test_several_new_units_are_created_in_one_request_without_a_read_first(clusters, work):
    """`start --no-block` of several new local units: one `POST /units` with `createAll` and
    nothing else (no lookup); with one of them existing already: that POST's 409 (nothing
    written, the existing units in its answer), then the creation of the new ones without a
    lookup (the read of the existing units' desired states follows, as before); the output byte
    for byte the full CLI's (`same`)."""
    names = ["all-a.service", "all-b.service", "all-c.service"]
    write_units(work, names + ["all-d.service"])
    requests = clusters[0].harness.server.metrics.requests
    before = dict(requests)
    out = same(clusters, work, "start", "--no-block", *names)
    assert out.stdout == "".join(f"Unit {n} inactive\n" for n in names) + "".join(
        f"Triggered unit {n} start\n" for n in names)
    added = {k: v - before.get(k, 0) for k, v in requests.items() if v != before.get(k, 0)}
    assert added == {("POST", "200"): 1}, added
    before = dict(requests)
    out = same(clusters, work, "start", "--no-block", "all-d.service", "all-a.service")
    assert out.stdout == "Unit all-d.service inactive\nTriggered unit all-d.service start\n"
    added = {k: v - before.get(k, 0) for k, v in requests.items() if v != before.get(k, 0)}
    assert added == {("POST", "409"): 1, ("PUT", "201"): 1, ("GET", "200"): 1}, added  # GET: desired states
    before = dict(requests)
    assert same(clusters, work, "start", "--no-block", *names).stdout == ""  # all launched already
    added = {k: v - before.get(k, 0) for k, v in requests.items() if v != before.get(k, 0)}
    assert added == {("POST", "409"): 1, ("GET", "200"): 1}, added
