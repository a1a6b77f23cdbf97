"""fleet's API v1 against real fleetds in a 2-node lab: every endpoint and status code, over the
TCP listener of node 1 (port 54728 on the lab's private bridge), with the effects checked in
the nodes' systemd. The in-process tests (test_api.py) cover the exact messages in more detail.
"""

from __future__ import annotations

import base64
import json
import struct
import urllib.error
import urllib.request

import pytest

from fleetd import __version__
from fleetlab.sysutil import eventually

pytest_plugins = ["fleetlab.pytest_plugin"]
pytestmark = pytest.mark.lab(nodes=2, wait_fleetd=True, agent_ttl="3s")

OPTIONS = [
    {"section": "Unit", "name": "Description", "value": "API lab unit"},
    {"section": "Service", "name": "ExecStart", "value": "/bin/sh -c 'while true; do sleep 1; done'"},
]


def call(lab, method: str, path: str, body=None, raw: bytes | None = None, content_type: str | None = "application/json"):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"{lab.api_url(1)}{path}", data=data, method=method)
    if content_type and data is not None:
        req.add_header("Content-Type", content_type)
    try:  # https with the lab's operator certificate (plain http with --insecure)
        with urllib.request.urlopen(req, timeout=10, context=lab.api_ssl_context()) as resp:
            status, headers, payload = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        status, headers, payload = exc.code, exc.headers, exc.read()
    assert headers["Server"] == f"fleetd/{__version__}"
    text = payload.decode()
    parsed = json.loads(text) if text and "json" in headers.get("Content-Type", "") else text
    if status >= 400:
        assert set(parsed["error"]) == {"code", "message"} and parsed["error"]["code"] == status
    return status, parsed


def active_on(lab, name: str) -> list[str]:
    return [n.name for n in lab.nodes
            if n.exec(["systemctl", "is-active", name], check=False).stdout.strip() == "active"]


def test_routing_errors_and_discovery(lab):
    assert call(lab, "POST", "/")[0] == 405  # GET / is the dashboard
    assert call(lab, "GET", "/nope")[0] == 404
    assert call(lab, "DELETE", "/fleet/v1/units")[0] == 405
    # POST /units creates many (beyond fleet, docs/api.md): it needs a JSON body of units
    assert call(lab, "POST", "/fleet/v1/units")[0] == 415
    assert call(lab, "POST", "/fleet/v1/units", {"units": []})[0] == 400
    status, doc = call(lab, "GET", "/fleet/v1/discovery")
    assert status == 200 and doc["rootUrl"].startswith(f"{lab.api_url(1)}/")
    assert "Units" in json.dumps(doc["resources"]) or "units" in doc["resources"]
    status, metrics = call(lab, "GET", "/metrics")
    assert status == 200 and "fleet" in metrics


def test_unit_lifecycle_through_the_api(lab):
    base = "/fleet/v1/units/api1.service"
    assert call(lab, "GET", base)[0] == 404
    assert call(lab, "PUT", base, {"desiredState": "launched"})[0] == 409  # unknown unit, no options
    assert call(lab, "PUT", base, {"desiredState": "launched", "options": OPTIONS}, content_type="text/plain")[0] == 415
    assert call(lab, "PUT", base, raw=b"{not json")[0] == 400
    assert call(lab, "PUT", base, {"name": "other.service", "desiredState": "launched", "options": OPTIONS})[0] == 400
    bad = OPTIONS + [{"section": "X-Fleet", "name": "MachineID", "value": "abc"},
                     {"section": "X-Fleet", "name": "Conflicts", "value": "x*"}]
    assert call(lab, "PUT", base, {"desiredState": "launched", "options": bad})[0] == 400

    assert call(lab, "PUT", base, {"desiredState": "launched", "options": OPTIONS})[0] == 201
    eventually(lambda: active_on(lab, "api1.service"), 20, "api1.service active on a node")
    status, unit = call(lab, "GET", base)
    assert status == 200 and unit["desiredState"] == "launched" and unit["machineID"] in {n.machine_id for n in lab.nodes}
    eventually(lambda: call(lab, "GET", base)[1].get("currentState") == "launched", 20, "currentState launched")
    assert call(lab, "PUT", base, {})[0] == 409  # existing unit, no desiredState
    assert call(lab, "PUT", base, {"desiredState": "loaded"})[0] == 204
    eventually(lambda: not active_on(lab, "api1.service"), 20, "api1.service stopped")
    eventually(lambda: [s["systemdActiveState"] for s in call(lab, "GET", "/fleet/v1/state?unitName=api1.service")[1]
                        ["states"]] == ["inactive"], 10, "the published state to say inactive")
    assert call(lab, "DELETE", base)[0] == 204
    assert call(lab, "DELETE", base)[0] == 404
    eventually(lambda: call(lab, "GET", "/fleet/v1/state?unitName=api1.service")[1].get("states", []) == [],
               20, "the unit state to go")


def test_lists_pagination_and_state_filters(lab):
    for i in range(3):
        assert call(lab, "PUT", f"/fleet/v1/units/pg{i}.service", {"desiredState": "launched", "options": OPTIONS})[0] == 201
    eventually(lambda: len(call(lab, "GET", "/fleet/v1/state")[1].get("states", [])) >= 3, 20, "3 unit states")
    status, listing = call(lab, "GET", "/fleet/v1/units")
    assert status == 200 and {"pg0.service", "pg1.service", "pg2.service"} <= {u["name"] for u in listing["units"]}
    bad_token = base64.urlsafe_b64encode(struct.pack("<HH", 7, 1)).decode()
    assert call(lab, "GET", f"/fleet/v1/units?nextPageToken={bad_token}")[0] == 400
    machine = call(lab, "GET", "/fleet/v1/units/pg0.service")[1]["machineID"]
    status, states = call(lab, "GET", f"/fleet/v1/state?machineID={machine}")
    assert status == 200 and all(s["machineID"] == machine for s in states["states"])
    for i in range(3):
        assert call(lab, "DELETE", f"/fleet/v1/units/pg{i}.service")[0] == 204


def test_machines_and_metadata_patch(lab):
    status, body = call(lab, "GET", "/fleet/v1/machines")
    assert status == 200
    machines = {m["id"]: m for m in body["machines"]}
    assert set(machines) == {n.machine_id for n in lab.nodes}
    assert machines[lab.node(2).machine_id]["primaryIP"] == lab.node(2).ip
    target = lab.node(2).machine_id
    ops = [{"op": "add", "path": f"/{target}/metadata/rack", "value": {"value": "r7"}}]
    assert call(lab, "PATCH", "/fleet/v1/machines", ops)[0] == 204
    assert call(lab, "GET", "/fleet/v1/machines")[1]["machines"][[m["id"] for m in body["machines"]].index(target)][
        "metadata"]["rack"] == "r7"
    # a unit pinned by the new metadata lands on node 2
    pinned = OPTIONS + [{"section": "X-Fleet", "name": "MachineMetadata", "value": "rack=r7"}]
    assert call(lab, "PUT", "/fleet/v1/units/rack.service", {"desiredState": "launched", "options": pinned})[0] == 201
    eventually(lambda: active_on(lab, "rack.service") == [lab.node(2).name], 20, "rack.service on node 2")
    assert call(lab, "DELETE", "/fleet/v1/units/rack.service")[0] == 204
    assert call(lab, "PATCH", "/fleet/v1/machines", [{"op": "noop", "path": f"/{target}/metadata/rack"}])[0] == 400
    assert call(lab, "PATCH", "/fleet/v1/machines", [{"op": "remove", "path": f"/{target}/metadata/rack"}])[0] == 204
