"""Authorization on the fleet API (fleetd.api.auth) against a real fleetd API server on a real
etcd: roles from client certificates made by the tests (fleetd.pki) and from the unix socket's
peer credentials (a client process running as `nobody`)."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import tempfile
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

from fleetctl.cli import cli
from fleetd.api.auth import OPERATOR, READ_ONLY, Identity, role_allows, role_of_peer, role_of_subject
from fleetd.model import Machine
from fleetd.pki import ClusterPKI

from _api_server import HELLO_OPTIONS, ApiHarness, ThreadedApiServer

MID = "d" * 32
BODY = {"desiredState": "launched", "options": HELLO_OPTIONS}


# ---------------------------------------------------------------------------- pure rules


@pytest.mark.parametrize("role, method, allowed", [
    (OPERATOR, "PUT", True), (OPERATOR, "DELETE", True), (OPERATOR, "PATCH", True), (OPERATOR, "GET", True),
    (READ_ONLY, "GET", True), (READ_ONLY, "HEAD", True), (READ_ONLY, "get", True),
    (READ_ONLY, "PUT", False), (READ_ONLY, "DELETE", False), (READ_ONLY, "PATCH", False),
    (READ_ONLY, "POST", False), (READ_ONLY, "OPTIONS", False), ("", "GET", False),
])
def test_role_allows(role, method, allowed):
    assert role_allows(role, method) is allowed


@pytest.mark.parametrize("org, role", [("operator", OPERATOR), ("read-only", READ_ONLY),
                                       ("machine", READ_ONLY), ("Operator", READ_ONLY), (None, READ_ONLY)])
def test_role_of_subject(org, role):
    subject = [(("commonName", "x"),)] + ([(("organizationName", org),)] if org else [])
    assert role_of_subject(subject) == ("certificate CN=x", role)


def test_role_of_peer():
    assert role_of_peer(0, 0, "") == OPERATOR
    assert role_of_peer(65534, 65534, "") == READ_ONLY
    assert role_of_peer(65534, 65534, "nogroup") == OPERATOR  # primary group
    assert role_of_peer(65534, 100, "root") == READ_ONLY
    assert role_of_peer(65534, 65534, "no-such-group-xyz") == READ_ONLY


# ---------------------------------------------------------------------------- TLS identities


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> ClusterPKI:
    p = ClusterPKI(tmp_path_factory.mktemp("pki") / "cluster")
    p.init()
    p.machine("server", ["127.0.0.1"])
    p.machine("peer", ["127.0.0.1"])
    p.client("alice", "operator")
    p.client("bob", "read-only")
    return p


def tls_config(pki: ClusterPKI) -> dict:
    server = pki.paths("server")
    return dict(api_insecure_tcp=False, api_cafile=str(pki.ca_path), api_certfile=str(server.cert),
                api_keyfile=str(server.key))


def client_ctx(pki: ClusterPKI, name: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_path))
    ctx.check_hostname = False
    ctx.load_cert_chain(pki.paths(name).cert, pki.paths(name).key)
    return ctx


@pytest.fixture
async def tls_api(etcd_settings, tmp_path, pki):
    async with ApiHarness(etcd_settings, tmp_path, Machine(MID, "127.0.0.1"), **tls_config(pki)) as harness:
        base = f"https://{harness.server.tcp_addresses[0]}"

        async def call(who: str, method: str, path: str, body=None):
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            async with harness.session.request(method, base + path, data=data, headers=headers,
                                               ssl=client_ctx(pki, who)) as resp:
                raw = await resp.read()
                return resp.status, (json.loads(raw) if raw and "json" in resp.content_type else raw.decode())

        harness.as_ = call
        yield harness


async def test_read_only_certificate_reads_and_is_refused_everything_else(tls_api):
    call = tls_api.as_
    assert (await call("alice", "PUT", "/fleet/v1/units/hello.service", BODY))[0] == 201
    for path in ("/fleet/v1/units", "/fleet/v1/units/hello.service", "/fleet/v1/state", "/fleet/v1/machines",
                 "/fleet/v1/discovery", "/metrics"):
        assert (await call("bob", "GET", path))[0] == 200, path
    refused = [
        ("PUT", "/fleet/v1/units/hello.service", {"desiredState": "inactive"}),  # stop
        ("PUT", "/fleet/v1/units/new.service", BODY),                            # submit + start
        ("PUT", "/fleet/v1/units/bad.service", {"desiredState": 17}),             # a bad body: still 403
        ("DELETE", "/fleet/v1/units/hello.service", None),                        # destroy
        ("DELETE", "/fleet/v1/units/no-such.service", None),                      # no 404 leak
        ("PATCH", "/fleet/v1/machines", [{"op": "add", "path": f"/{MID}/metadata/a", "value": "b"}]),
        ("PUT", "/nowhere", None),                                                # no route leak either
        ("POST", "/fleet/v1/units", None),
    ]
    for method, path, body in refused:
        status, payload = await call("bob", method, path, body)
        assert status == 403, (method, path, payload)
        assert set(payload) == {"error"} and payload["error"]["code"] == 403
        assert payload["error"]["message"].startswith("forbidden: certificate CN=bob has role read-only")
    # nothing changed
    assert [u.name for u in await tls_api.registry.list_units()] == ["hello.service"]
    assert (await tls_api.registry.get_unit("hello.service")).desired_state.value == "launched"
    # a machine certificate (another fleetd relaying status/journal) reads only as well
    assert (await call("peer", "GET", "/fleet/v1/units"))[0] == 200
    assert (await call("peer", "DELETE", "/fleet/v1/units/hello.service"))[0] == 403
    # the operator does it all
    assert (await call("alice", "DELETE", "/fleet/v1/units/hello.service"))[0] == 204


def test_fleetctl_with_a_read_only_certificate(etcd_settings, tmp_path, pki):
    with ThreadedApiServer(etcd_settings, tmp_path / "srv", Machine(MID, "127.0.0.1"), **tls_config(pki)) as srv:
        endpoint = f"https://{srv.harness.server.tcp_addresses[0]}"

        def fleetctl(who: str, *args: str):
            p = pki.paths(who)
            return CliRunner().invoke(cli, ["--endpoint", endpoint, "--ca-file", str(pki.ca_path), "--cert-file",
                                            str(p.cert), "--key-file", str(p.key), *args], catch_exceptions=False)

        unit = tmp_path / "hello.service"
        unit.write_text("[Service]\nExecStart=/bin/sleep 1000\n")
        listed = fleetctl("bob", "list-units")
        assert listed.exit_code == 0 and "UNIT" in listed.output
        started = fleetctl("bob", "submit", str(unit))
        assert started.exit_code == 1 and "forbidden" in started.output and "read-only" in started.output
        assert fleetctl("alice", "submit", str(unit)).exit_code == 0
        assert "hello.service" in fleetctl("bob", "list-unit-files").output


# ---------------------------------------------------------------------------- unix socket peers

CLIENT = r"""
import http.client, json, socket, sys
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(sys.argv[1])
out = []
for method, path, body in json.loads(sys.argv[2]):
    c = Unix("localhost")
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse(); out.append([r.status, r.read().decode()]); c.close()
print(json.dumps(out))
"""


def as_nobody(sock: str, requests: list, group: int = 65534) -> list:
    proc = subprocess.run(["/usr/bin/python3", "-c", CLIENT, sock, json.dumps(requests)], user=65534, group=group,
                          extra_groups=[], capture_output=True, text=True, timeout=30, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def socket_dir():
    d = Path(tempfile.mkdtemp(prefix="fleet-auth-"))
    d.chmod(0o755)  # nobody must reach the socket inside
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
@pytest.mark.parametrize("group, expected", [("", READ_ONLY), ("nogroup", OPERATOR)])
async def test_unix_socket_peer_credentials(etcd_settings, tmp_path, socket_dir, group, expected):
    sock = str(socket_dir / "fleet.sock")
    async with ApiHarness(etcd_settings, tmp_path, Machine(MID, "127.0.0.1"), api_socket=sock,
                          api_socket_group=group) as harness:
        if not group:
            os.chmod(sock, 0o666)  # a widened socket: whoever connects reads only
        got = await asyncio.to_thread(as_nobody, sock, [["GET", "/fleet/v1/units", None],
                                                        ["PUT", "/fleet/v1/units/hello.service", BODY]])
        assert got[0][0] == 200
        if expected == READ_ONLY:
            assert got[1][0] == 403 and json.loads(got[1][1])["error"]["message"].startswith(
                "forbidden: uid 65534")
            assert await harness.registry.get_unit("hello.service") is None
        else:
            assert got[1][0] == 201
        # root is always an operator on the socket
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as session:
            async with session.put("http://fleet/fleet/v1/units/root.service", json=BODY) as resp:
                assert resp.status == 201
