"""The OpenAPI description (fleetd.api.openapi, docs/openapi.json) against the real server on a
real etcd: the file in the repo is the served document, every route of the aiohttp app is
described, and every documented status code of every operation is reached by a request."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from fleetd.api.openapi import PREFIXES, openapi_document
from fleetd.api.server import build_app
from fleetd.config import EtcdSettings
from fleetd.model import DesiredState, Machine, Placement, Unit
from fleetd.pki import ClusterPKI
from fleetlab.testing.etcd import EtcdServer
from fleetd.unit.file import UnitFile

from _api_server import HELLO_OPTIONS, ApiHarness, publish_state, register_machine

REPO = Path(__file__).resolve().parents[2]
MID = "e" * 32
HELLO = UnitFile.from_options([(o["section"], o["name"], o["value"]) for o in HELLO_OPTIONS])
GLOBAL = UnitFile.parse("[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nGlobal=true\n")
NEW = {"desiredState": "inactive", "options": HELLO_OPTIONS}
DASH = {"X-Fleet-Dashboard": "1"}  # the dashboard's action header
DOC = openapi_document()


def test_the_repo_file_is_the_served_document():
    assert json.loads((REPO / "docs/openapi.json").read_text()) == DOC, \
        "docs/openapi.json is stale: python -m fleetd.api.openapi > docs/openapi.json"


def test_every_route_is_described_and_nothing_else():
    from unittest import mock

    app = build_app(mock.MagicMock())
    routes = {r.canonical for r in app.router.resources()}
    assert routes == set(DOC["paths"])


def test_the_document_is_valid_openapi():
    import schemathesis

    schema = schemathesis.openapi.from_dict(DOC)
    assert len(list(schema.get_all_operations())) == sum(
        1 for ops in DOC["paths"].values() for m in ops if m in ("get", "put", "delete", "patch", "post"))


def documented() -> set[tuple[str, str, str]]:
    """(path relative to its prefix or absolute, METHOD, status) for every documented response."""
    out = set()
    for path, ops in DOC["paths"].items():
        for method, op in ops.items():
            if method == "parameters":
                continue
            for status in op["responses"]:
                out.add((path, method.upper(), status))
    return out


def rel(path: str) -> tuple[str, str]:
    for prefix in PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            return prefix, path[len(prefix):]
    return "", path


# (relative path, METHOD, status) -> (server, METHOD, URL suffix, body or raw, headers)
# servers: "main" (insecure TCP, data below), "ro" (TLS, a read-only certificate), "down" (etcd
# paused), "nometrics" (metrics disabled, no presence: not a cluster member)
# Endless streams (text/event-stream, application/x-ndjson) are read up to their first line.
REQUESTS = {
    ("", "GET", "405"): ("main", "GET", "", None, {}),
    ("/units", "GET", "200"): ("main", "GET", "/units", None, {}),
    ("/units", "GET", "400"): ("main", "GET", "/units?nextPageToken=xyz", None, {}),
    ("/units", "GET", "503"): ("down", "GET", "/units", None, {}),
    ("/units", "POST", "200"): ("main", "POST", "/units", {"units": [{"name": "m1.service", **NEW}, {"name": "m2.service", **NEW}]}, {}),
    ("/units", "POST", "400"): ("main", "POST", "/units", {"units": []}, {}),
    ("/units", "POST", "403"): ("ro", "POST", "/units", {"units": [{"name": "m3.service", **NEW}]}, {}),
    ("/units", "POST", "409"): ("main", "POST", "/units", {"createAll": [{"name": "m1.service", **NEW},
                                                                         {"name": "m9.service", **NEW}]}, {}),
    ("/units", "POST", "415"): ("main", "POST", "/units", b"{}", {"Content-Type": "text/plain"}),
    ("/units", "POST", "503"): ("down", "POST", "/units", {"units": [{"name": "m4.service", **NEW}]}, {}),
    ("/units/{name}", "GET", "200"): ("main", "GET", "/units/hello.service", None, {}),
    ("/units/{name}", "GET", "404"): ("main", "GET", "/units/nope.service", None, {}),
    ("/units/{name}", "GET", "503"): ("down", "GET", "/units/hello.service", None, {}),
    ("/units/{name}", "PUT", "201"): ("main", "PUT", "/units/{new}", NEW, {}),
    ("/units/{name}", "PUT", "204"): ("main", "PUT", "/units/hello.service", {"desiredState": "launched"}, {}),
    ("/units/{name}", "PUT", "400"): ("main", "PUT", "/units/hello.service", {"desiredState": "running"}, {}),
    ("/units/{name}", "PUT", "403"): ("ro", "PUT", "/units/hello.service", {"desiredState": "inactive"}, {}),
    ("/units/{name}", "PUT", "409"): ("main", "PUT", "/units/ghost.service", {"desiredState": "launched"}, {}),
    ("/units/{name}", "PUT", "412"): ("main", "PUT", "/units/hello.service", NEW, {"If-None-Match": "*"}),
    ("/units/{name}", "PUT", "415"): ("main", "PUT", "/units/hello.service", b"{}", {"Content-Type": "text/plain"}),
    ("/units/{name}", "PUT", "503"): ("down", "PUT", "/units/x.service", NEW, {}),
    ("/units/{name}", "DELETE", "204"): ("main", "DELETE", "/units/{new}", None, {}),
    ("/units/{name}", "DELETE", "403"): ("ro", "DELETE", "/units/hello.service", None, {}),
    ("/units/{name}", "DELETE", "404"): ("main", "DELETE", "/units/nope.service", None, {}),
    ("/units/{name}", "DELETE", "503"): ("down", "DELETE", "/units/x.service", None, {}),
    ("/units/{name}/status", "GET", "200"): ("main", "GET", "/units/hello.service/status", None, {}),
    ("/units/{name}/status", "GET", "400"): ("main", "GET", "/units/glob.service/status", None, {}),
    ("/units/{name}/status", "GET", "404"): ("main", "GET", "/units/nope.service/status", None, {}),
    ("/units/{name}/status", "GET", "409"): ("main", "GET", "/units/idle.service/status", None, {}),
    ("/units/{name}/status", "GET", "503"): ("down", "GET", "/units/x.service/status", None, {}),
    ("/units/{name}/journal", "GET", "200"): ("main", "GET", "/units/hello.service/journal?lines=1", None, {}),
    ("/units/{name}/journal", "GET", "400"): ("main", "GET", "/units/hello.service/journal?lines=x", None, {}),
    ("/units/{name}/journal", "GET", "404"): ("main", "GET", "/units/nope.service/journal", None, {}),
    ("/units/{name}/journal", "GET", "409"): ("main", "GET", "/units/idle.service/journal", None, {}),
    ("/units/{name}/journal", "GET", "503"): ("down", "GET", "/units/x.service/journal", None, {}),
    ("/state", "GET", "200"): ("main", "GET", "/state", None, {}),
    ("/state", "GET", "400"): ("main", "GET", "/state?nextPageToken=xyz", None, {}),
    ("/state", "GET", "503"): ("down", "GET", "/state", None, {}),
    ("/state/{name}", "GET", "200"): ("main", "GET", "/state/hello.service", None, {}),
    ("/state/{name}", "GET", "404"): ("main", "GET", "/state/nope.service", None, {}),
    ("/state/{name}", "GET", "503"): ("down", "GET", "/state/x.service", None, {}),
    ("/machines", "GET", "200"): ("main", "GET", "/machines", None, {}),
    ("/machines", "GET", "400"): ("main", "GET", "/machines?nextPageToken=xyz", None, {}),
    ("/machines", "GET", "503"): ("down", "GET", "/machines", None, {}),
    ("/machines", "PATCH", "204"): ("main", "PATCH", "/machines",
                                    [{"op": "add", "path": f"/{MID}/metadata/k", "value": "v"}], {}),
    ("/machines", "PATCH", "400"): ("main", "PATCH", "/machines", [{"op": "move", "path": "/x"}], {}),
    ("/machines", "PATCH", "403"): ("ro", "PATCH", "/machines", [], {}),
    ("/machines", "PATCH", "503"): ("down", "PATCH", "/machines",
                                    [{"op": "add", "path": f"/{MID}/metadata/k", "value": "v"}], {}),
    ("/discovery", "GET", "200"): ("main", "GET", "/discovery", None, {}),
    ("/discovery.json", "GET", "200"): ("main", "GET", "/discovery.json", None, {}),
    ("/openapi.json", "GET", "200"): ("main", "GET", "/openapi.json", None, {}),
    ("/_watch/units", "GET", "200"): ("main", "GET", "/_watch/units?since=1&timeout=0.2&unitName=hello.service",
                                      None, {}),
    ("/_watch/units", "GET", "400"): ("main", "GET", "/_watch/units?since=-1", None, {}),
    ("/_watch/units", "GET", "503"): ("down", "GET", "/_watch/units", None, {}),
    ("/services", "GET", "200"): ("main", "GET", "/services", None, {}),
    ("/services", "GET", "503"): ("down", "GET", "/services", None, {}),
    ("/endpoints", "GET", "200"): ("main", "GET", "/endpoints", None, {}),
    ("/endpoints", "GET", "503"): ("down", "GET", "/endpoints?watch=true", None, {}),
    ("/services/{service}/endpoints", "GET", "200"): ("main", "GET", "/services/web/endpoints?watch=true", None, {}),
    ("/services/{service}/endpoints", "GET", "400"): ("main", "GET", "/services/no_label/endpoints", None, {}),
    ("/services/{service}/endpoints", "GET", "503"): ("down", "GET", "/services/web/endpoints", None, {}),
    ("/", "GET", "200"): ("main", "GET", "/", None, {}),
    ("/", "GET", "503"): ("down", "GET", "/", None, {}),
    ("/dashboard", "GET", "200"): ("main", "GET", "/dashboard", None, {}),
    ("/dashboard", "GET", "503"): ("down", "GET", "/dashboard", None, {}),
    ("/dashboard/placement", "GET", "200"): ("main", "GET", "/dashboard/placement", None, {}),
    ("/dashboard/placement", "GET", "503"): ("down", "GET", "/dashboard/placement", None, {}),
    ("/dashboard/services", "GET", "200"): ("main", "GET", "/dashboard/services", None, {}),
    ("/dashboard/units/{name}", "GET", "200"): ("main", "GET", "/dashboard/units/hello.service", None, {}),
    ("/dashboard/units/{name}", "GET", "404"): ("main", "GET", "/dashboard/units/nope.service", None, {}),
    ("/dashboard/units/{name}", "GET", "503"): ("down", "GET", "/dashboard/units/x.service", None, {}),
    ("/dashboard/events", "GET", "200"): ("main", "GET", "/dashboard/events?view=overview&since=0", None, {}),
    ("/dashboard/events", "GET", "400"): ("main", "GET", "/dashboard/events?view=nope", None, {}),
    ("/dashboard/events", "GET", "503"): ("down", "GET", "/dashboard/events", None, {}),
    ("/dashboard/static/{file}", "GET", "200"): ("main", "GET", "/dashboard/static/dashboard.js", None, {}),
    ("/dashboard/static/{file}", "GET", "404"): ("main", "GET", "/dashboard/static/nope.js", None, {}),
    ("/dashboard/actions/unit/{name}/{action}", "POST", "200"): (
        "main", "POST", "/dashboard/actions/unit/hello.service/start", None, DASH),
    ("/dashboard/actions/unit/{name}/{action}", "POST", "400"): (
        "main", "POST", "/dashboard/actions/unit/web@.service/start", None, DASH),
    ("/dashboard/actions/unit/{name}/{action}", "POST", "403"): (
        "main", "POST", "/dashboard/actions/unit/hello.service/start", None, {}),
    ("/dashboard/actions/unit/{name}/{action}", "POST", "404"): (
        "main", "POST", "/dashboard/actions/unit/nope.service/destroy", None, DASH),
    ("/dashboard/actions/unit/{name}/{action}", "POST", "503"): (
        "down", "POST", "/dashboard/actions/unit/x.service/stop", None, DASH),
    ("/dashboard/actions/machine/{id}/{action}", "POST", "200"): (
        "main", "POST", f"/dashboard/actions/machine/{MID}/undrain", None, DASH),
    ("/dashboard/actions/machine/{id}/{action}", "POST", "403"): (
        "ro", "POST", f"/dashboard/actions/machine/{MID}/drain", None, DASH),
    ("/dashboard/actions/machine/{id}/{action}", "POST", "404"): (
        "main", "POST", f"/dashboard/actions/machine/{'0' * 32}/drain", None, DASH),
    ("/dashboard/actions/machine/{id}/{action}", "POST", "503"): (
        "down", "POST", f"/dashboard/actions/machine/{MID}/drain", None, DASH),
    ("/peer/v1/etcd", "GET", "200"): ("main", "GET", "/peer/v1/etcd", None, {}),
    ("/peer/v1/etcd", "GET", "404"): ("nometrics", "GET", "/peer/v1/etcd", None, {}),
    ("/peer/v1/quiet", "GET", "200"): ("main", "GET", "/peer/v1/quiet", None, {}),
    ("/peer/v1/quiet", "GET", "404"): ("nometrics", "GET", "/peer/v1/quiet", None, {}),
    ("/metrics", "GET", "200"): ("main", "GET", "/metrics", None, {}),
    ("/metrics", "GET", "404"): ("nometrics", "GET", "/metrics", None, {}),
}


ABSOLUTE = {p for p in DOC["paths"] if rel(p)[0] == ""}  # served without the /fleet/v1 prefixes


def test_the_request_table_covers_exactly_the_documented_responses():
    wanted = {(rel(p)[1], m, s) for p, m, s in documented()}
    assert wanted == set(REQUESTS)


async def _seed(reg) -> None:
    lease = await register_machine(reg, MID, "127.0.0.1")
    await reg.create_unit(Unit("hello.service", HELLO, DesiredState.LAUNCHED))
    await reg.campaign(MID, lease)
    await reg.apply_schedule(fence_machine_id=MID, place=[Placement("hello.service", MID, HELLO.hash,
                                                                     DesiredState.LAUNCHED)])
    await publish_state(reg, lease, "hello.service", MID, HELLO.hash)
    await reg.create_unit(Unit("idle.service", HELLO))
    await reg.create_unit(Unit("glob.service", GLOBAL, DesiredState.LAUNCHED))


async def test_every_documented_status_is_reachable(etcd_settings, tmp_path):
    pki = ClusterPKI(tmp_path / "pki")
    pki.init()
    pki.machine("server", ["127.0.0.1"])
    pki.client("viewer", "read-only")
    server = pki.paths("server")
    tls = dict(api_insecure_tcp=False, api_cafile=str(pki.ca_path), api_certfile=str(server.cert),
               api_keyfile=str(server.key))
    import ssl

    ro_ctx = ssl.create_default_context(cafile=str(pki.ca_path))
    ro_ctx.check_hostname = False
    ro_ctx.load_cert_chain(pki.paths("viewer").cert, pki.paths("viewer").key)

    machine = Machine(MID, "127.0.0.1")
    with EtcdServer() as lonely:
        down_settings = EtcdSettings(endpoints=(lonely.endpoint,), key_prefix="/down/", request_timeout=0.5)
        async with ApiHarness(etcd_settings, tmp_path / "main", machine) as main, \
                ApiHarness(etcd_settings, tmp_path / "ro", machine, **tls) as ro, \
                ApiHarness(down_settings, tmp_path / "down", machine) as down, \
                ApiHarness(etcd_settings, tmp_path / "nm", machine) as nometrics:
            nometrics.server.context.metrics = None
            nometrics.server.context.extras.pop("presence", None)  # peer: not a cluster member
            await _seed(main.registry)
            lonely.pause()
            try:
                reached = set()
                counter = 0
                for (relpath, method, status), (kind, verb, suffix, body, headers) in sorted(REQUESTS.items()):
                    prefixes = [""] if relpath in ABSOLUTE else list(PREFIXES)
                    for prefix in prefixes:
                        counter += 1
                        url = prefix + suffix.replace("{new}", f"new{counter}.service")
                        if "{new}" in suffix and verb == "DELETE":  # something to destroy
                            assert (await main.call("PUT", url, body=NEW))[0] == 201
                        if kind == "ro":
                            base = f"https://{ro.server.tcp_addresses[0]}"
                            data = json.dumps(body).encode() if body is not None else None
                            async with ro.session.request(verb, base + url, data=data, ssl=ro_ctx,
                                                          headers={"Content-Type": "application/json",
                                                                   **headers}) as resp:
                                got = resp.status
                        elif "watch=true" in url or relpath == "/dashboard/events":  # endless: one line
                            harness = {"main": main, "down": down}[kind]
                            async with harness.session.request(verb, harness.base + url) as resp:
                                got = resp.status
                                if got == 200:
                                    ctype = resp.headers["Content-Type"]
                                    assert ctype.startswith(("text/event-stream", "application/x-ndjson")), ctype
                                    first = await asyncio.wait_for(resp.content.readline(), 10)
                                    assert first.strip(), (url, first)
                        else:
                            harness = {"main": main, "down": down, "nometrics": nometrics}[kind]
                            raw = body if isinstance(body, bytes) else None
                            got, _, payload = await harness.call(verb, url, body=None if raw else body, raw=raw,
                                                                 headers=headers)
                        assert str(got) == status, (prefix, relpath, method, status, got)
                        reached.add((relpath, method, status))
            finally:
                lonely.resume()
    assert reached == set(REQUESTS)
