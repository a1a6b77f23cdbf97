"""fleetd's HTTP API (fleet API v1 and extensions) served in-process against a real etcd."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import ssl
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from fleetd import __version__
from fleetd.api.server import ApiServer
from fleetd.wire import PageToken
from fleetd.config import EtcdSettings, FleetConfig
from fleetd.errors import ConfigError
from fleetd.model import DesiredState, Machine, Placement, Unit
from fleetd.registry import Registry
from fleetlab.testing.etcd import EtcdServer
from fleetd.unit.file import UnitFile

from _api_server import HELLO_OPTIONS, ApiHarness, publish_state, register_machine

MID_A = "a" * 32
MID_B = "b" * 32
HELLO = UnitFile.from_options([(o["section"], o["name"], o["value"]) for o in HELLO_OPTIONS])


@pytest.fixture
async def api(etcd_settings, tmp_path):
    async with ApiHarness(etcd_settings, tmp_path, Machine(MID_A, "127.0.0.1")) as harness:
        yield harness


def put_body(state: str = "launched", options=HELLO_OPTIONS, **extra) -> dict:
    body = {"desiredState": state, "options": options}
    body.update(extra)
    return body


def error(code: int, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


# ---------------------------------------------------------------------------- routing, headers


async def test_root_unknown_paths_and_server_header(api):
    for method, path, code in [("POST", "/", 405), ("GET", "/fleet/v1", 405), ("GET", "/v1-alpha", 405),
                               ("GET", "/nope", 404), ("GET", "/fleet/v1/", 404), ("GET", "/fleet/v1/units/", 404),
                               ("GET", "/fleet/v1/bogus", 404)]:  # GET / is the dashboard (test_dashboard.py)
        status, headers, body = await api.call(method, path)
        assert status == code, path
        assert headers["Server"] == f"fleetd/{__version__}"
        assert headers["Content-Type"] == "application/json"
        assert body["error"]["code"] == code
    status, headers, _ = await api.call("PUT", "/fleet/v1/units/x.service", body=put_body("inactive"))
    assert status == 201 and headers["Server"] == f"fleetd/{__version__}"


async def test_method_not_allowed_messages(api):
    # POST /units creates many units (beyond fleet, tests/etcd/test_api_create_batching_etcd.py)
    assert (await api.call("DELETE", "/fleet/v1/units"))[2] == error(405, "only GET supported against this resource")
    assert (await api.call("POST", "/fleet/v1/units/a.service"))[2] == error(
        405, "only GET, PUT and DELETE supported against this resource")
    assert (await api.call("DELETE", "/fleet/v1/state"))[2] == error(405, "only GET supported against this resource")
    assert (await api.call("PUT", "/fleet/v1/machines"))[2] == error(
        405, "only GET and PATCH supported against this resource")
    # fleet answers 400 (not 405) for a non-GET on the discovery document
    assert (await api.call("POST", "/fleet/v1/discovery"))[:1] == (400,)


# ---------------------------------------------------------------------------- units


async def test_unit_lifecycle(api):
    assert (await api.call("GET", "/fleet/v1/units"))[::2] == (200, {})
    status, headers, body = await api.call("PUT", "/fleet/v1/units/hello.service", body=put_body("loaded"))
    assert (status, body) == (201, None)
    status, _, entity = await api.call("GET", "/fleet/v1/units/hello.service")
    assert status == 200
    # fleet's field order and omitempty: no machineID while unscheduled
    assert list(entity) == ["currentState", "desiredState", "name", "options"]
    assert entity["currentState"] == "inactive" and entity["desiredState"] == "loaded"
    assert entity["options"] == [{"name": o["name"], "section": o["section"], "value": o["value"]} for o in HELLO_OPTIONS]
    assert (await api.call("GET", "/fleet/v1/units"))[2] == {"units": [entity]}

    assert (await api.call("PUT", "/fleet/v1/units/hello.service", body={"desiredState": "launched"}))[0] == 204
    unit = await api.registry.get_unit("hello.service")
    assert unit.desired_state is DesiredState.LAUNCHED and unit.hash == HELLO.hash
    # the same options again only change the state (204); different options replace the body (201)
    assert (await api.call("PUT", "/fleet/v1/units/hello.service", body=put_body("launched")))[0] == 204
    changed = HELLO_OPTIONS[:1] + [{"section": "Service", "name": "ExecStart", "value": "/bin/sleep 9"}]
    assert (await api.call("PUT", "/fleet/v1/units/hello.service", body={"options": changed}))[0] == 201
    unit = await api.registry.get_unit("hello.service")
    assert unit.file.value("Service", "ExecStart") == "/bin/sleep 9"
    # created anew, as fleet: inactive unless the request names a desired state
    assert unit.desired_state is DesiredState.INACTIVE
    changed[1] = {"section": "Service", "name": "ExecStart", "value": "/bin/sleep 10"}
    assert (await api.call("PUT", "/fleet/v1/units/hello.service",
                           body={"options": changed, "desiredState": "launched"}))[0] == 201
    assert (await api.registry.get_unit("hello.service")).desired_state is DesiredState.LAUNCHED

    assert (await api.call("DELETE", "/fleet/v1/units/hello.service"))[::2] == (204, None)
    assert (await api.call("DELETE", "/fleet/v1/units/hello.service"))[::2] == (404, error(404, "unit does not exist"))
    assert (await api.call("GET", "/fleet/v1/units/hello.service"))[::2] == (404, error(404, "unit does not exist"))
    # /v1-alpha is the same API
    assert (await api.call("PUT", "/v1-alpha/units/alpha.service", body=put_body("inactive")))[0] == 201
    assert (await api.call("GET", "/fleet/v1/units/alpha.service"))[0] == 200


async def test_current_state_and_machine_of_a_scheduled_unit(api):
    await api.registry.create_unit(Unit("hello.service", HELLO, DesiredState.LAUNCHED))
    lease = await register_machine(api.registry, MID_A, "127.0.0.1")
    await api.registry.campaign(MID_A, lease)
    await api.registry.apply_schedule(fence_machine_id=MID_A, place=[
        Placement("hello.service", MID_A, HELLO.hash, DesiredState.LAUNCHED)])
    entity = (await api.call("GET", "/fleet/v1/units/hello.service"))[2]
    assert (entity["currentState"], entity["machineID"]) == ("inactive", MID_A)
    await publish_state(api.registry, lease, "hello.service", MID_A, HELLO.hash)
    entity = (await api.call("GET", "/fleet/v1/units/hello.service"))[2]
    assert (entity["currentState"], entity["machineID"]) == ("launched", MID_A)


@pytest.mark.parametrize(
    "headers,raw,code,message",
    [
        ({"Content-Type": "text/plain"}, b"{}", 415, "only acceptable Content-Type is application/json"),
        ({}, b"{}", 415, "expected 1 Content-Type, got 0"),
        ({"Content-Type": "application/json; charset=utf-8"}, b"{not json", 400, None),
        ({"Content-Type": "application/json"}, b"[1,2]", 400, None),
        ({"Content-Type": "application/json"}, b'{"options": "nope"}', 400, None),
    ],
)
async def test_put_content_type_and_body_errors(api, headers, raw, code, message):
    status, resp_headers, body = await api.call("PUT", "/fleet/v1/units/hello.service", raw=raw, headers=headers)
    assert status == code
    assert resp_headers["Content-Type"] == "application/json"
    if message is not None:
        assert body == error(code, message)
    else:
        assert body["error"]["message"].startswith("unable to decode body")
    assert await api.registry.get_unit("hello.service") is None


async def test_put_rules(api):
    call = api.call
    status, _, body = await call("PUT", "/fleet/v1/units/a.service", body=put_body(name="b.service"))
    assert (status, body) == (400, error(400, 'name in URL "a.service" differs from unit name in request body "b.service"'))
    status, _, body = await call("PUT", "/fleet/v1/units/nodot", body=put_body())
    assert status == 400 and "invalid unit name" in body["error"]["message"]
    assert (await call("PUT", "/fleet/v1/units/a.service", body={"desiredState": "launched"}))[::2] == (
        409, error(409, "unit does not exist and options field empty"))
    assert (await call("PUT", "/fleet/v1/units/a.service", body=put_body("inactive")))[0] == 201
    assert (await call("PUT", "/fleet/v1/units/a.service", body={"name": "a.service"}))[::2] == (
        409, error(409, "must provide DesiredState to update existing unit"))
    status, _, body = await call("PUT", "/fleet/v1/units/a.service", body={"desiredState": "running"})
    assert status == 400 and "invalid desired state 'running'" in body["error"]["message"]
    # templates cannot be activated, at creation or later
    assert (await call("PUT", "/fleet/v1/units/web@.service", body=put_body("inactive")))[0] == 201
    assert (await call("PUT", "/fleet/v1/units/web@.service", body={"desiredState": "launched"}))[::2] == (
        400, error(400, 'cannot activate template "web@.service"'))
    assert (await call("PUT", "/fleet/v1/units/tpl@.service", body=put_body("loaded")))[::2] == (
        400, error(400, 'cannot activate template "tpl@.service"'))
    # forbidden [X-Fleet] combinations and unrepresentable options are refused with the reason
    bad = HELLO_OPTIONS + [{"section": "X-Fleet", "name": "MachineID", "value": "abc"},
                           {"section": "X-Fleet", "name": "Conflicts", "value": "x*"}]
    status, _, body = await call("PUT", "/fleet/v1/units/bad.service", body=put_body(options=bad))
    assert status == 400 and "MachineID cannot be combined with Conflicts" in body["error"]["message"]
    status, _, body = await call("PUT", "/fleet/v1/units/bad.service", body=put_body(
        options=[{"section": "Service", "name": "Exec=Start", "value": "x"}]))
    assert status == 400 and "cannot be represented" in body["error"]["message"]
    assert await api.registry.get_unit("bad.service") is None
    # beyond fleet: conditional create
    assert (await call("PUT", "/fleet/v1/units/a.service", body=put_body(), headers={"If-None-Match": "*"}))[0] == 412
    assert (await call("PUT", "/fleet/v1/units/c.service", body=put_body(), headers={"If-None-Match": "*"}))[0] == 201


async def test_unit_names_are_url_decoded(api):
    # fleet's Go client escapes "@" in path segments (googleapi.Expand)
    status, _, _ = await api.call("PUT", "/fleet/v1/units/web%401.service", body=put_body("inactive"))
    assert status == 201
    assert (await api.registry.get_unit("web@1.service")) is not None
    assert (await api.call("GET", "/fleet/v1/units/web@1.service"))[2]["name"] == "web@1.service"


# ---------------------------------------------------------------------------- pagination


def token(limit: int, page: int) -> str:
    return base64.urlsafe_b64encode(struct.pack("<HH", limit, page)).decode()


async def test_page_tokens_are_fleets():
    assert PageToken(100, 2).encode() == "ZAACAA=="
    assert token(100, 2) == PageToken(100, 2).encode()


async def test_pagination_and_bad_tokens(etcd_settings, tmp_path):
    async with ApiHarness(etcd_settings, tmp_path, token_limit=2) as api:
        await api.registry.create_units([Unit(f"u{i}.service", HELLO) for i in range(5)])
        names, path, pages = [], "/fleet/v1/units", 0
        while True:
            status, _, page = await api.call("GET", path)
            assert status == 200
            pages += 1
            names += [u["name"] for u in page.get("units", [])]
            if "nextPageToken" not in page:
                break
            assert list(page) == ["nextPageToken", "units"]  # fleet's field order
            path = f"/fleet/v1/units?nextPageToken={page['nextPageToken']}"
        assert names == [f"u{i}.service" for i in range(5)] and pages == 3
        # a page that is exactly full still gets a token (fleet); the next one is empty
        await api.registry.create_units([Unit("u5.service", HELLO)])
        status, _, page = await api.call("GET", f"/fleet/v1/units?nextPageToken={token(2, 3)}")
        assert len(page["units"]) == 2 and page["nextPageToken"] == token(2, 4)
        assert (await api.call("GET", f"/fleet/v1/units?nextPageToken={token(2, 4)}"))[::2] == (200, {})
        for bad, message in [
            (token(100, 1), "token limit must be 2"),
            (token(2, 0), "token page must be greater than zero"),
            ("not-base64!", None),
            ("AAA=", None),
        ]:
            for resource in ("units", "state", "machines"):
                status, _, body = await api.call("GET", f"/fleet/v1/{resource}?nextPageToken={bad}")
                assert status == 400, (resource, bad)
                if message:
                    assert body == error(400, message)
        status, _, body = await api.call("GET", f"/fleet/v1/units?nextPageToken={token(2, 1)}&nextPageToken={token(2, 2)}")
        assert (status, body) == (400, error(400, "too many values for page token"))


async def test_fleet_functional_test_bad_token_is_400(api):
    status, headers, body = await api.call("GET", "/fleet/v1/machines?nextPageToken=EwBMLg==")
    assert (status, body) == (400, error(400, "token limit must be 100"))
    assert "application/json" in headers["Content-Type"]


# ---------------------------------------------------------------------------- state


async def test_state_list_filters_and_item(api):
    reg = api.registry
    lease_a = await register_machine(reg, MID_A, "10.0.0.1")
    lease_b = await register_machine(reg, MID_B, "10.0.0.2")
    await publish_state(reg, lease_a, "x.service", MID_A, HELLO.hash)
    await publish_state(reg, lease_b, "x.service", MID_B, HELLO.hash, "failed", "failed")
    await publish_state(reg, lease_b, "y.service", MID_B, HELLO.hash)
    _, _, page = await api.call("GET", "/fleet/v1/state")
    assert [(s["name"], s["machineID"]) for s in page["states"]] == [
        ("x.service", MID_A), ("x.service", MID_B), ("y.service", MID_B)]
    assert page["states"][1] == {"hash": HELLO.hash, "machineID": MID_B, "name": "x.service",
                                 "systemdActiveState": "failed", "systemdLoadState": "loaded",
                                 "systemdSubState": "failed"}
    assert list(page["states"][1]) == ["hash", "machineID", "name", "systemdActiveState",
                                       "systemdLoadState", "systemdSubState"]
    _, _, page = await api.call("GET", f"/fleet/v1/state?machineID={MID_B}")
    assert [s["name"] for s in page["states"]] == ["x.service", "y.service"]
    _, _, page = await api.call("GET", f"/fleet/v1/state?unitName=x.service&machineID={MID_A}")
    assert [(s["name"], s["machineID"]) for s in page["states"]] == [("x.service", MID_A)]
    assert (await api.call("GET", "/fleet/v1/state?unitName=nope.service"))[::2] == (200, {})
    status, _, state = await api.call("GET", "/fleet/v1/state/y.service")
    assert status == 200 and state["machineID"] == MID_B
    assert (await api.call("GET", "/fleet/v1/state/nope.service"))[::2] == (404, error(404, "unit state does not exist"))


# ---------------------------------------------------------------------------- machines


async def test_machines_list_and_metadata_patch(api):
    reg = api.registry
    await register_machine(reg, MID_A, "10.0.0.1", {"region": "eu"})
    await register_machine(reg, MID_B, "10.0.0.2")
    _, _, page = await api.call("GET", "/fleet/v1/machines")
    first, second = page["machines"]
    assert list(first)[:3] == ["id", "metadata", "primaryIP"]
    assert (first["id"], first["primaryIP"], first["metadata"]) == (MID_A, "10.0.0.1", {"region": "eu"})
    assert "metadata" not in second  # omitempty, as fleet
    # fleet's functional test body: value is {"value": "..."}; the PATCH has no Content-Type
    ops = [{"op": "add", "path": f"/{MID_A}/metadata/foo", "Value": {"value": "bar"}},
           {"op": "replace", "path": f"/{MID_B}/metadata/ping", "Value": {"value": "splat"}}]
    status, headers, body = await api.call("PATCH", "/fleet/v1/machines", raw=json.dumps(ops).encode())
    assert (status, body) == (204, None) and "application/json" in headers["Content-Type"]
    machines = {m["id"]: m for m in (await api.call("GET", "/fleet/v1/machines"))[2]["machines"]}
    assert machines[MID_A]["metadata"] == {"foo": "bar", "region": "eu"}
    assert machines[MID_B]["metadata"] == {"ping": "splat"}
    ops = [{"op": "remove", "path": f"/{MID_A}/metadata/region"}, {"op": "add", "path": f"/{MID_B}/metadata/k", "value": "v"}]
    assert (await api.call("PATCH", "/fleet/v1/machines", body=ops))[0] == 204
    machines = {m["id"]: m for m in (await api.call("GET", "/fleet/v1/machines"))[2]["machines"]}
    assert machines[MID_A]["metadata"] == {"foo": "bar"} and machines[MID_B]["metadata"] == {"ping": "splat", "k": "v"}
    # beyond fleet: draining
    assert (await api.call("PATCH", "/fleet/v1/machines", body=[{"op": "add", "path": f"/{MID_B}/draining"}]))[0] == 204
    assert (await reg.get_machine(MID_B)).draining


@pytest.mark.parametrize(
    "ops,message",
    [
        ([{"op": "noop", "path": f"/{MID_A}/metadata/foo", "value": {"value": "bar"}}], "invalid op: expect add, remove, or replace"),
        ([{"op": "add", "path": f"/{MID_A}/foo", "value": {"value": "bar"}}], "machine metadata path invalid"),
        ([{"op": "add", "path": f"/{MID_A}/metadata/b@d", "value": {"value": "bar"}}], "machine metadata path invalid"),
        ([{"op": "add", "path": f"/{MID_A}/metadata/foo", "value": {"value": ""}}], "invalid value: add and replace require a value"),
        ([{"op": "replace", "path": f"/{MID_A}/metadata/foo"}], "invalid value: add and replace require a value"),
        ({"op": "add"}, "invalid JSON patch: expected a list of operations"),
    ],
)
async def test_bad_patch_is_400_and_changes_nothing(api, ops, message):
    await register_machine(api.registry, MID_A, "10.0.0.1")
    good = {"op": "add", "path": f"/{MID_A}/metadata/first", "value": {"value": "x"}}
    body = [good] + ops if isinstance(ops, list) else ops
    assert (await api.call("PATCH", "/fleet/v1/machines", body=body))[::2] == (400, error(400, message))
    assert dict((await api.registry.get_machine(MID_A)).metadata) == {}  # validated before any write


async def test_patch_with_bad_json(api):
    status, _, body = await api.call("PATCH", "/fleet/v1/machines", raw=b"[{", headers={"Content-Type": "application/json"})
    assert status == 400 and body["error"]["message"].startswith("invalid JSON patch")


# ---------------------------------------------------------------------------- discovery, metrics


async def test_discovery_document(api):
    status, _, doc = await api.call("GET", "/fleet/v1/discovery")
    assert status == 200 and doc["id"] == "fleet:v1" and doc["kind"] == "discovery#restDescription"
    assert doc["rootUrl"] == api.base + "/" and doc["servicePath"] == "fleet/v1/"
    methods = doc["resources"]["Units"]["methods"]
    assert methods["Set"]["httpMethod"] == "PUT" and methods["Set"]["path"] == "units/{unitName}"
    assert set(doc["schemas"]["UnitState"]["properties"]) == {
        "name", "hash", "machineID", "systemdLoadState", "systemdActiveState", "systemdSubState"}
    # over the unix socket there is no URL a client could use: fleet's placeholder stays
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(api.server.unix_paths[0])) as s:
        async with s.get("http://domain-sock/fleet/v1/discovery") as resp:
            assert (await resp.json())["rootUrl"] == "$ENDPOINT/"


async def test_metrics(api):
    reg = api.registry
    await reg.create_units([Unit("a.service", HELLO, DesiredState.LAUNCHED), Unit("b.service", HELLO)])
    await api.call("GET", "/fleet/v1/units")
    status, headers, text = await api.call("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    lines = text.splitlines()
    assert 'fleet_units{desired_state="launched"} 1.0' in lines
    assert 'fleet_units{desired_state="inactive"} 1.0' in lines
    assert 'fleet_units_current{state="inactive"} 2.0' in lines
    assert "fleet_registry_up 1.0" in lines
    assert any(line.startswith('fleet_etcd_request_duration_seconds_count{operation="txn"}') for line in lines)
    assert any(line.startswith('fleet_api_requests_total{code="200",method="GET"}') for line in lines)


# ---------------------------------------------------------------------------- etcd outage


async def test_503_while_etcd_is_unreachable_then_recovers(tmp_path):
    with EtcdServer() as etcd:
        settings = EtcdSettings(endpoints=(etcd.endpoint,), key_prefix="/outage/", request_timeout=1.0)
        async with ApiHarness(settings, tmp_path) as api:
            assert (await api.call("PUT", "/fleet/v1/units/a.service", body=put_body("inactive")))[0] == 201
            etcd.pause()
            try:
                # at once: each waits out the request timeout (1 s) before its 503
                paths = ("/fleet/v1/units", "/fleet/v1/units/a.service", "/fleet/v1/state", "/fleet/v1/machines")
                answers = await asyncio.gather(*(api.call("GET", path) for path in paths))
                for path, (status, headers, body) in zip(paths, answers):
                    assert (status, body) == (503, error(503, "fleet server unable to communicate with etcd")), path
                    assert headers["Server"] == f"fleetd/{__version__}"
                status, _, text = await api.call("GET", "/metrics")  # metrics still answer
                assert status == 200 and "fleet_registry_up 0.0" in text.splitlines()
            finally:
                etcd.resume()
            deadline = time.monotonic() + 20
            while True:  # no restart: the same server answers again once etcd is back
                status, _, body = await api.call("GET", "/fleet/v1/units")
                if status == 200:
                    break
                assert status == 503 and time.monotonic() < deadline
                await asyncio.sleep(0.2)
            assert [u["name"] for u in body["units"]] == ["a.service"]


# ---------------------------------------------------------------------------- listeners and TLS


async def test_unix_socket_mode_stale_file_and_cleanup(etcd_settings, tmp_path):
    sock_path = tmp_path / "fleet.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock_path))
    stale.close()  # a socket file nobody listens on: replaced
    async with ApiHarness(etcd_settings, tmp_path) as api:
        assert stat.S_IMODE(sock_path.stat().st_mode) == 0o660
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(str(sock_path))) as s:
            async with s.get("http://domain-sock/fleet/v1/units") as resp:
                assert resp.status == 200 and resp.headers["Server"].startswith("fleetd/")
        second = ApiServer(FleetConfig(etcd=etcd_settings, api_socket=str(sock_path)), api.registry,
                           use_socket_activation=False)
        with pytest.raises(ConfigError, match="already serving"):
            await second.start()
    assert not sock_path.exists()
    (tmp_path / "plain").write_text("x")
    with pytest.raises(ConfigError, match="not a socket"):
        await ApiServer(FleetConfig(etcd=etcd_settings, api_socket=str(tmp_path / "plain")), None,
                        use_socket_activation=False).start()


async def test_tcp_without_tls_is_refused(etcd_settings, tmp_path):
    async with await Registry.connect(etcd_settings) as reg:
        cfg = FleetConfig(etcd=etcd_settings, api_socket=str(tmp_path / "s.sock"), api_tcp="127.0.0.1:0")
        with pytest.raises(ConfigError, match="refusing to serve the fleet API on TCP without TLS"):
            await ApiServer(cfg, reg, use_socket_activation=False).start()
        cfg = FleetConfig(etcd=etcd_settings, api_socket="", api_tcp="127.0.0.1:0", api_cafile="/x")
        with pytest.raises(ConfigError, match="must be given together"):
            await ApiServer(cfg, reg, use_socket_activation=False).start()
    assert not (tmp_path / "s.sock").exists()


#: P-256 keys, as fleetd.pki makes them (an RSA key took openssl 0.2-0.5 s of CPU each)
NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")


def make_pki(tmp: Path) -> dict[str, str]:
    """A CA, a server and a client certificate made with the openssl CLI."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp)

    run("req", "-x509", *NEW_KEY, "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=fleet-test-ca")
    for name in ("server", "client", "rogue"):
        run("req", *NEW_KEY, "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        (tmp / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        if name == "rogue":  # self-signed: not from the cluster CA
            run("x509", "-req", "-in", "rogue.csr", "-signkey", "rogue.key", "-out", "rogue.pem", "-days", "2")
        else:
            run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return {k: str(tmp / k) for k in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key",
                                      "rogue.pem", "rogue.key")}


async def test_tcp_with_tls_requires_client_certificates(etcd_settings, tmp_path):
    pki = make_pki(tmp_path)
    async with await Registry.connect(etcd_settings) as reg:
        cfg = FleetConfig(etcd=etcd_settings, api_socket="", api_tcp="127.0.0.1:0", api_cafile=pki["ca.pem"],
                          api_certfile=pki["server.pem"], api_keyfile=pki["server.key"])
        async with ApiServer(cfg, reg, use_socket_activation=False) as server:
            url = f"https://{server.tcp_addresses[0]}/fleet/v1/units"

            def client_ctx(cert: str | None, key: str | None) -> ssl.SSLContext:
                ctx = ssl.create_default_context(cafile=pki["ca.pem"])
                if cert:
                    ctx.load_cert_chain(cert, key)
                return ctx

            async with aiohttp.ClientSession() as s:
                async with s.get(url, ssl=client_ctx(pki["client.pem"], pki["client.key"])) as resp:
                    assert resp.status == 200
                for cert, key in ((None, None), (pki["rogue.pem"], pki["rogue.key"])):
                    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionResetError)):
                        async with s.get(url, ssl=client_ctx(cert, key)) as resp:
                            await resp.read()
                with pytest.raises(aiohttp.ClientError):  # plain HTTP is not served
                    async with s.get(url.replace("https", "http")) as resp:
                        await resp.read()


SOCKET_ACTIVATED = r"""
import asyncio, json, sys
from fleetd.api.server import ApiServer
from fleetd.config import EtcdSettings, FleetConfig
from fleetd.registry import Registry

async def main():
    settings = EtcdSettings(endpoints=(sys.argv[1],), key_prefix=sys.argv[2])
    async with await Registry.connect(settings) as reg:
        server = ApiServer(FleetConfig(etcd=settings, api_socket=sys.argv[3]), reg)
        await server.start()
        print(json.dumps({"unix": server.unix_paths}), flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_systemd_socket_activation(etcd_settings, tmp_path):
    activated = tmp_path / "activated.sock"
    unused = tmp_path / "unused.sock"
    script = tmp_path / "serve.py"
    script.write_text(SOCKET_ACTIVATED)
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", str(activated), sys.executable, str(script),
         etcd_settings.endpoints[0], etcd_settings.key_prefix, str(unused)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2],
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])),
    )
    try:
        for _ in range(100):
            if activated.exists():
                break
            await asyncio.sleep(0.05)
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(str(activated))) as s:
            async with s.get("http://domain-sock/fleet/v1/machines", timeout=aiohttp.ClientTimeout(total=20)) as resp:
                assert resp.status == 200 and resp.headers["Server"].startswith("fleetd/")
        line = json.loads(proc.stdout.readline())
        assert line["unix"] == [str(activated)]  # the activated socket replaces api_socket
        assert not unused.exists()
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------- status / journal


async def _place(reg: Registry, name: str, machine_id: str, lease: int) -> None:
    await reg.create_unit(Unit(name, HELLO, DesiredState.LAUNCHED))
    await reg.campaign(machine_id, lease)
    await reg.apply_schedule(fence_machine_id=machine_id, place=[Placement(name, machine_id, HELLO.hash, DesiredState.LAUNCHED)])
    await publish_state(reg, lease, name, machine_id, HELLO.hash)


async def test_status_and_journal_run_on_the_units_machine(api):
    lease = await register_machine(api.registry, MID_A, "127.0.0.1")
    await _place(api.registry, "hello.service", MID_A, lease)
    status, headers, text = await api.call("GET", "/fleet/v1/units/hello.service/status")
    # this host's systemctl really ran (no systemd as PID 1 here, so it reports that and fails)
    assert status == 200 and headers["X-Fleet-Machine-ID"] == MID_A
    assert headers["Content-Type"].startswith("text/plain")
    local = subprocess.run(["systemctl", "status", "-l", "--no-pager", "hello.service"], capture_output=True, text=True)
    assert int(headers["X-Fleet-Exit-Status"]) == local.returncode
    assert text == local.stdout + local.stderr
    status, headers, text = await api.call("GET", "/fleet/v1/units/hello.service/journal?lines=5&output=short-iso")
    local = subprocess.run(["journalctl", "--unit", "hello.service", "--no-pager", "-n", "5", "--output", "short-iso"],
                           capture_output=True, text=True)
    assert status == 200 and headers["X-Fleet-Machine-ID"] == MID_A
    assert sorted((text or "").splitlines()) == sorted((local.stdout + local.stderr).splitlines())
    for query, message in [("lines=x", "lines='x' is not an integer"), ("lines=-1", "lines=-1 out of range"),
                           ("output=evil", "output='evil' is not a journalctl output mode"),
                           ("follow=maybe", "follow='maybe' is not a boolean")]:
        status, _, body = await api.call("GET", f"/fleet/v1/units/hello.service/journal?{query}")
        assert status == 400 and body["error"]["message"].startswith(message)
    assert (await api.call("GET", "/fleet/v1/units/nope.service/status"))[0] == 404
    await api.registry.create_unit(Unit("idle.service", HELLO))
    assert (await api.call("GET", "/fleet/v1/units/idle.service/status"))[::2] == (
        409, error(409, "Unit idle.service does not appear to be loaded."))


async def test_status_is_relayed_to_the_machine_running_the_unit(etcd_settings, tmp_path):
    """fleetd A (127.0.0.1) relays to fleetd B (127.0.0.2), which runs systemctl itself."""
    from fleetlab.testing.etcd import free_port

    port = free_port()
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    async with ApiHarness(etcd_settings, a_dir, Machine(MID_A, "127.0.0.1"), api_tcp=f"127.0.0.1:{port}") as a, \
            ApiHarness(etcd_settings, b_dir, Machine(MID_B, "127.0.0.2"), api_tcp=f"127.0.0.2:{port}") as b:
        await register_machine(a.registry, MID_A, "127.0.0.1")
        lease_b = await register_machine(b.registry, MID_B, "127.0.0.2")
        await _place(b.registry, "remote.service", MID_B, lease_b)
        status, headers, text = await a.call("GET", "/fleet/v1/units/remote.service/status")
        assert status == 200 and headers["X-Fleet-Machine-ID"] == MID_B
        assert "X-Fleet-Exit-Status" in headers and text
        status, headers, _ = await a.call("GET", "/fleet/v1/units/remote.service/journal?lines=3")
        assert status == 200 and headers["X-Fleet-Machine-ID"] == MID_B
        # a relayed request is never relayed again
        status, _, body = await a.call("GET", "/fleet/v1/units/remote.service/status",
                                       headers={"X-Fleet-Relayed-By": "c" * 32})
        assert status == 502 and "not relaying it again" in body["error"]["message"]
    # B is gone: A cannot reach it and says where it tried
    async with ApiHarness(etcd_settings, a_dir, Machine(MID_A, "127.0.0.1"), api_tcp=f"127.0.0.1:{port}") as a:
        status, _, body = await a.call("GET", "/fleet/v1/units/remote.service/status")
        assert status == 502
        assert body["error"]["message"].startswith(f"cannot reach the fleet API of machine {MID_B[:8]} at http://127.0.0.2:{port}")


def _journalctl_pids(unit: str) -> list[str]:
    out = subprocess.run(["pgrep", "-f", f"journalctl --unit {unit} "], capture_output=True, text=True).stdout
    return out.split()


async def test_journal_follow_streams_until_the_client_goes(api):
    unit = f"follow-{os.getpid()}.service"
    lease = await register_machine(api.registry, MID_A, "127.0.0.1")
    await _place(api.registry, unit, MID_A, lease)
    async with api.session.get(f"{api.base}/fleet/v1/units/{unit}/journal?follow=true&lines=1") as resp:
        assert resp.status == 200 and resp.headers["X-Fleet-Machine-ID"] == MID_A
        first = await asyncio.wait_for(resp.content.readline(), 10)
        assert first  # journalctl's first line, streamed before the command ends
        assert len(_journalctl_pids(unit)) == 1  # still following
    deadline = time.monotonic() + 10
    while _journalctl_pids(unit):  # the client left: fleetd kills journalctl
        assert time.monotonic() < deadline, "journalctl -f outlived its client"
        await asyncio.sleep(0.1)


async def test_metrics_of_this_fleetds_engine(etcd_settings, tmp_path):
    from fleetd.engine.leader import Engine

    async with await Registry.connect(etcd_settings) as reg:
        engine = Engine(reg, MID_A, 1.0)
        cfg = FleetConfig(etcd=etcd_settings, api_socket="", api_tcp="127.0.0.1:0", api_insecure_tcp=True)
        async with ApiServer(cfg, reg, None, None, engine, use_socket_activation=False) as server:
            await engine.reconcile(await reg.snapshot())
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://{server.tcp_addresses[0]}/metrics") as resp:
                    lines = (await resp.text()).splitlines()
    assert "fleet_engine_leader 0.0" in lines
    assert "fleet_engine_reconcile_passes_total 1.0" in lines
    assert any(line.startswith("fleet_engine_last_reconcile_duration_seconds ") for line in lines)
