"""The OpenAPI 3 description of fleetd's HTTP API: fleet's v1 routes and the project's extensions.

`openapi_document()` is the one source: fleetd serves it at GET /fleet/v1/openapi.json, and
docs/openapi.json is it written out (`python -m fleetd.api.openapi > docs/openapi.json`; a test
keeps the two equal, checks that every route of the aiohttp app is described and that every
documented status code is reachable, and fuzzes the server with schemathesis against it).

Every route of fleet's API is served under both prefixes, /fleet/v1 and fleet's older /v1-alpha;
/metrics, /peer/v1/etcd, /peer/v1/quiet and the web dashboard (`/`, /dashboard/...) only once, without a prefix.
Streams are described by their content type: text/event-stream (/dashboard/events) and
application/x-ndjson (endpoints?watch=true) last until the client hangs up.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from fleetd import __version__

PREFIXES = ("/fleet/v1", "/v1-alpha")
JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _empty(description: str) -> dict[str, Any]:
    return {"description": description}


_S = {"type": "string"}
UNIT_NAME = {
    "name": "name", "in": "path", "required": True,
    "description": "unit name, e.g. hello.service or web@1.service (URL-encoded)",
    "schema": {"type": "string", "minLength": 1},
}
PAGE_TOKEN = {
    "name": "nextPageToken", "in": "query", "required": False,
    "description": "fleet's page token from the previous page (URL-safe base64 of {limit, page})",
    "schema": {"type": "string"},
}
MACHINE_ID = {
    "name": "machineID", "in": "query", "required": False,
    "description": "the machine whose state (or status/journal) is wanted",
    "schema": {"type": "string"},
}
UNAVAILABLE = _error("fleet server unable to communicate with etcd")
WATCH = {
    "name": "watch", "in": "query", "required": False,
    "description": "true (or 1, yes): stream application/x-ndjson, one {\"endpoints\": [...]} line now and "
                   "one after every change, until the client hangs up",
    "schema": {"type": "string", "enum": ["true", "false"]},
}
HTML = "text/html"


def _endpoints(description: str) -> dict[str, Any]:
    return {"description": description + " (a stream of such lines with watch=true)",
            "content": {JSON: {"schema": _ref("EndpointList")},
                        "application/x-ndjson": {"schema": _S}}}


def _html(description: str) -> dict[str, Any]:
    return {"description": description, "content": {HTML: {"schema": _S}}}

SCHEMAS_ERROR_BODY: dict[str, Any] = {
    "type": "object", "required": ["code", "message"], "additionalProperties": False,
    "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
}
SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": SCHEMAS_ERROR_BODY},
    },
    "UnitOption": {
        "type": "object",
        "properties": {"section": _S, "name": _S, "value": _S},
        "description": "one [section] name=value line; control characters are refused (400)",
    },
    "Unit": {
        "type": "object",
        "properties": {
            "name": _S,
            "desiredState": {"type": "string", "enum": ["inactive", "loaded", "launched"]},
            "currentState": {"type": "string", "enum": ["inactive", "loaded", "launched"]},
            "machineID": _S,
            "options": {"type": "array", "items": _ref("UnitOption")},
        },
    },
    "UnitPage": {
        "type": "object",
        "properties": {"units": {"type": "array", "items": _ref("Unit")}, "nextPageToken": _S},
    },
    "UnitState": {
        "type": "object",
        "properties": {"name": _S, "hash": _S, "machineID": _S, "systemdLoadState": _S,
                       "systemdActiveState": _S, "systemdSubState": _S},
    },
    "UnitStatePage": {
        "type": "object",
        "properties": {"states": {"type": "array", "items": _ref("UnitState")}, "nextPageToken": _S},
    },
    "Machine": {
        "type": "object",
        "properties": {
            "id": _S, "primaryIP": _S, "version": _S,
            "metadata": {"type": "object", "additionalProperties": _S},
            "cpus": {"type": "number"}, "memory": {"type": "integer"}, "draining": {"type": "boolean"},
        },
    },
    "MachinePage": {
        "type": "object",
        "properties": {"machines": {"type": "array", "items": _ref("Machine")}, "nextPageToken": _S},
    },
    "UnitRequest": {
        "type": "object",
        "description": "a partial Unit: options to create or replace, desiredState to change",
        "properties": {
            "name": _S,
            "desiredState": {"type": "string", "enum": ["inactive", "loaded", "launched"]},
            "options": {"type": "array", "items": _ref("UnitOption")},
        },
    },
    "UnitBatch": {
        "type": "object",
        "description": "beyond fleet: units to create, each as PUT /units/{name} takes it: `units` each only "
                       "if absent; or `createAll` (1 to 60 units): all in one transaction if none exists, else "
                       "none (409 with the existing units)",
        "properties": {"units": {"type": "array", "items": _ref("UnitRequest")},
                       "createAll": {"type": "array", "items": _ref("UnitRequest")}},
    },
    "UnitBatchResults": {
        "type": "object", "required": ["results"],
        "description": "one result per unit of the request, in its order: the status (and error envelope) "
                       "PUT /units/{name} with If-None-Match: * would have answered",
        "properties": {"results": {"type": "array", "items": {
            "type": "object", "required": ["name", "status"],
            "properties": {"name": _S, "status": {"type": "integer"},
                           "error": SCHEMAS_ERROR_BODY}}}},
    },
    "WatchResult": {
        "type": "object", "required": ["revision"],
        "description": "without since: the current revision only; with since: the first change after it",
        "properties": {"revision": {"type": "integer"}, "changed": {"type": "boolean"}},
    },
    "ServiceList": {
        "type": "object", "required": ["services"],
        "properties": {"services": {"type": "array", "items": {
            "type": "object",
            "properties": {"name": _S, "healthy": {"type": "integer"}, "total": {"type": "integer"}},
        }}},
    },
    "Endpoint": {
        "type": "object",
        "properties": {"service": _S, "unit": _S, "machineID": _S, "host": _S, "port": {"type": "integer"},
                       "protocol": _S, "tags": {"type": "array", "items": _S}, "health": _S, "label": _S,
                       "weight": {"type": "integer"}, "priority": {"type": "integer"}},
    },
    "EndpointList": {
        "type": "object", "required": ["endpoints"],
        "properties": {"endpoints": {"type": "array", "items": _ref("Endpoint")}},
    },
    "PeerAnswer": {
        "type": "object", "required": ["machineID", "answer"],
        "properties": {"machineID": _S, "answer": {"type": "string", "enum": ["reaches-etcd", "cut-off"]}},
    },
    "PeerQuiet": {
        "type": "object", "required": ["machineID", "quietFor"],
        "properties": {"machineID": _S, "quietFor": {"type": "number", "minimum": 0}},
    },
    "MachinePatch": {
        "type": "array",
        "description": "JSON-patch-like operations on /<machineID>/metadata/<key> or /<machineID>/draining",
        "items": {
            "type": "object", "required": ["op", "path"],
            "properties": {
                "op": {"type": "string", "enum": ["add", "remove", "replace"]},
                "path": _S,
                "value": {"oneOf": [_S, {"type": "object", "properties": {"value": _S}}]},
            },
        },
    },
}


def _operations() -> dict[str, dict[str, Any]]:
    """Path (relative to a prefix; "" is the prefix itself) -> operations."""
    forbidden = _error("the client's role may not change the cluster (read-only certificate or socket peer)")
    return {
        "": {"get": {
            "summary": "the API root: no resource",
            "responses": {"405": _error("no resource here")},
        }},
        "/units": {"get": {
            "summary": "list units (fleet: Units.List)",
            "parameters": [PAGE_TOKEN],
            "responses": {"200": _json(_ref("UnitPage"), "a page of units"),
                          "400": _error("invalid page token"), "503": UNAVAILABLE},
        }, "post": {
            "summary": "beyond fleet: create many units, each only if absent, in shared transactions",
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("UnitBatch")}}},
            "responses": {
                "200": _json(_ref("UnitBatchResults"), "a result per unit"),
                "400": _error("not {\"units\": [...]}, no unit, or too many; an invalid unit of createAll"),
                "403": forbidden,
                "409": _json({"type": "object", "required": ["error"],
                              "properties": {"error": SCHEMAS_ERROR_BODY,
                                             "units": {"type": "array", "items": _ref("Unit")}}},
                             "createAll: units existed (listed; nothing written), or a unit without options"),
                "415": _error("not application/json"), "503": UNAVAILABLE,
            },
        }},
        "/units/{name}": {
            "parameters": [UNIT_NAME],
            "get": {
                "summary": "one unit (fleet: Units.Get)",
                "responses": {"200": _json(_ref("Unit"), "the unit"),
                              "404": _error("unit does not exist"), "503": UNAVAILABLE},
            },
            "put": {
                "summary": "create or replace a unit, or set its desired state (fleet: Units.Set)",
                "parameters": [{"name": "If-None-Match", "in": "header", "required": False,
                                "description": "beyond fleet: `*` creates only", "schema": {"type": "string"}}],
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("UnitRequest")}}},
                "responses": {
                    "201": _empty("created or replaced"), "204": _empty("desired state set"),
                    "400": _error("invalid body, name, options, desired state, or template activation"),
                    "403": forbidden,
                    "409": _error("unknown unit without options, or known unit without desiredState"),
                    "412": _error("If-None-Match: * and the unit exists"),
                    "415": _error("not application/json"), "503": UNAVAILABLE,
                },
            },
            "delete": {
                "summary": "destroy a unit (fleet: Units.Delete)",
                "responses": {"204": _empty("destroyed"), "403": forbidden,
                              "404": _error("unit does not exist"), "503": UNAVAILABLE},
            },
        },
        "/units/{name}/status": {"get": {
            "summary": "beyond fleet: `systemctl status` of the unit on its machine (text/plain)",
            "parameters": [UNIT_NAME, MACHINE_ID],
            "responses": {
                "200": {"description": "systemctl's output; X-Fleet-Exit-Status has its exit status",
                        "content": {"text/plain": {"schema": _S}}},
                "400": _error("invalid unit name, or a global unit without machineID"),
                "404": _error("unit does not exist"),
                "409": _error("the unit is not loaded (on that machine)"),
                "503": UNAVAILABLE,
            },
        }},
        "/units/{name}/journal": {"get": {
            "summary": "beyond fleet: `journalctl` of the unit on its machine (streamed text/plain)",
            "parameters": [
                UNIT_NAME, MACHINE_ID,
                {"name": "lines", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 0, "maximum": 1_000_000}},
                {"name": "output", "in": "query", "required": False, "schema": {"type": "string"}},
                {"name": "follow", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": ["true", "false"]}},
            ],
            "responses": {
                "200": {"description": "journalctl's output", "content": {"text/plain": {"schema": _S}}},
                "400": _error("invalid parameter or unit name, or a global unit without machineID"),
                "404": _error("unit does not exist"),
                "409": _error("the unit is not loaded (on that machine)"),
                "503": UNAVAILABLE,
            },
        }},
        "/state": {"get": {
            "summary": "unit states as the machines report them (fleet: UnitState.List)",
            "parameters": [PAGE_TOKEN, MACHINE_ID,
                           {"name": "unitName", "in": "query", "required": False, "schema": _S}],
            "responses": {"200": _json(_ref("UnitStatePage"), "a page of unit states"),
                          "400": _error("invalid page token"), "503": UNAVAILABLE},
        }},
        "/state/{name}": {"get": {
            "summary": "beyond fleet: one unit's state",
            "parameters": [UNIT_NAME, MACHINE_ID],
            "responses": {"200": _json(_ref("UnitState"), "the state"),
                          "404": _error("unit state does not exist"), "503": UNAVAILABLE},
        }},
        "/machines": {
            "get": {
                "summary": "machines (fleet: Machines.List; cpus, memory, draining beyond fleet)",
                "parameters": [PAGE_TOKEN],
                "responses": {"200": _json(_ref("MachinePage"), "a page of machines"),
                              "400": _error("invalid page token"), "503": UNAVAILABLE},
            },
            "patch": {
                "summary": "set or remove machine metadata; beyond fleet: drain/undrain",
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("MachinePatch")}}},
                "responses": {"204": _empty("applied"), "400": _error("invalid patch"), "403": forbidden,
                              "503": UNAVAILABLE},
            },
        },
        "/_watch/units": {"get": {
            "summary": "beyond fleet: a change feed of units for blocking waits (long poll; docs/api.md)",
            "parameters": [
                {"name": "since", "in": "query", "required": False,
                 "description": "wait for the first change after this revision; without it the answer is "
                                "the current revision, at once",
                 "schema": {"type": "integer", "minimum": 0}},
                {"name": "timeout", "in": "query", "required": False,
                 "description": "seconds to hold the request (default 30, capped at 60)",
                 "schema": {"type": "number", "minimum": 0}},
                {"name": "unitName", "in": "query", "required": False,
                 "description": "only changes of these units count (repeatable)",
                 "schema": {"type": "array", "items": _S}, "style": "form", "explode": True},
                {"name": "wake", "in": "query", "required": False,
                 "description": "states: a placement or job write answers only if no state report of the "
                                "units follows within 0.5 s (the report answers then)",
                 "schema": {"type": "string", "enum": ["any", "states"]}},
            ],
            "responses": {"200": _json(_ref("WatchResult"), "the revision, and whether a change came before the timeout"),
                          "400": _error("since, timeout or wake invalid"), "503": UNAVAILABLE},
        }},
        "/services": {"get": {
            "summary": "beyond fleet: services of the cluster with their healthy and total endpoints",
            "responses": {"200": _json(_ref("ServiceList"), "the services"), "503": UNAVAILABLE},
        }},
        "/endpoints": {"get": {
            "summary": "beyond fleet: every service endpoint (sorted by service, unit label)",
            "parameters": [WATCH],
            "responses": {"200": _endpoints("the endpoints"), "503": UNAVAILABLE},
        }},
        "/services/{service}/endpoints": {"get": {
            "summary": "beyond fleet: the endpoints of one service",
            "parameters": [{"name": "service", "in": "path", "required": True,
                            "description": "the service name (a DNS label)", "schema": {"type": "string", "minLength": 1}},
                           WATCH],
            "responses": {"200": _endpoints("the service's endpoints"),
                          "400": _error("the service name is not a DNS label"), "503": UNAVAILABLE},
        }},
        "/discovery": {"get": {
            "summary": "fleet's discovery document (Google API discovery format)",
            "responses": {"200": _json({"type": "object"}, "the discovery document")},
        }},
        "/discovery.json": {"get": {
            "summary": "the same discovery document",
            "responses": {"200": _json({"type": "object"}, "the discovery document")},
        }},
        "/openapi.json": {"get": {
            "summary": "this OpenAPI description",
            "responses": {"200": _json({"type": "object"}, "the OpenAPI 3 document")},
        }},
    }


def _dashboard() -> dict[str, Any]:
    """The web dashboard (fleetd/api/dashboard.py): `/` and /dashboard/...; other methods than the
    ones described answer 405."""
    forbidden = _error("not an operator, or without the header X-Fleet-Dashboard: 1")
    action_header = {"name": "X-Fleet-Dashboard", "in": "header", "required": True,
                     "description": "must be 1 (the page's script sets it; a cross-site form cannot)",
                     "schema": {"type": "string", "enum": ["1"]}}
    overview = {"get": {
        "summary": "the dashboard: machines and units, failed units first",
        "responses": {"200": _html("the page"), "503": UNAVAILABLE},
    }}
    return {
        "/": overview,
        "/dashboard": copy.deepcopy(overview),
        "/dashboard/placement": {"get": {
            "summary": "the dashboard: machines x units",
            "responses": {"200": _html("the page"), "503": UNAVAILABLE},
        }},
        "/dashboard/services": {"get": {
            "summary": "the dashboard: services and endpoints",
            "responses": {"200": _html("the page")},
        }},
        "/dashboard/units/{name}": {"get": {
            "summary": "the dashboard: one unit, its state, file, status and journal",
            "parameters": [UNIT_NAME],
            "responses": {"200": _html("the page"), "404": _error("unit does not exist"), "503": UNAVAILABLE},
        }},
        "/dashboard/events": {"get": {
            "summary": "the dashboard's live updates: Server-Sent Events until the client hangs up",
            "parameters": [
                {"name": "view", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": ["overview", "placement", "unit", "services"]}},
                {"name": "unit", "in": "query", "required": False, "schema": _S},
                {"name": "since", "in": "query", "required": False,
                 "description": "the revision the page was rendered at", "schema": {"type": "integer"}},
            ],
            "responses": {"200": {"description": "an event stream: hello, then page fragments as HTML",
                                  "content": {"text/event-stream": {"schema": _S}}},
                          "400": _error("invalid view or since"), "503": UNAVAILABLE},
        }},
        "/dashboard/static/{file}": {"get": {
            "summary": "the dashboard's script and style sheet",
            "parameters": [{"name": "file", "in": "path", "required": True,
                            "schema": {"type": "string", "minLength": 1}}],
            "responses": {"200": {"description": "dashboard.js or dashboard.css",
                                  "content": {"application/javascript": {"schema": _S},
                                              "text/css": {"schema": _S}}},
                          "404": _error("no such file")},
        }},
        "/dashboard/actions/unit/{name}/{action}": {"post": {
            "summary": "the dashboard's unit buttons: start, stop or destroy (operators)",
            "parameters": [UNIT_NAME, {"name": "action", "in": "path", "required": True,
                                       "schema": {"type": "string", "enum": ["start", "stop", "destroy"]}},
                           action_header],
            "responses": {
                "200": _json({"type": "object", "properties": {"unit": _S, "action": _S}}, "done"),
                "400": _error("invalid unit name, or start of a template"),
                "403": forbidden, "404": _error("unit does not exist, or no such action"),
                "503": UNAVAILABLE,
            },
        }},
        "/dashboard/actions/machine/{id}/{action}": {"post": {
            "summary": "the dashboard's machine buttons: drain or undrain (operators)",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}},
                           {"name": "action", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": ["drain", "undrain"]}},
                           action_header],
            "responses": {
                "200": _json({"type": "object", "properties": {"machine": _S, "action": _S}}, "done"),
                "403": forbidden, "404": _error("machine not registered, or no such action"),
                "503": UNAVAILABLE,
            },
        }},
    }


def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for prefix in PREFIXES:
        for rel, ops in _operations().items():
            ops = copy.deepcopy(ops)
            if prefix != PREFIXES[0]:
                for op in ops.values():
                    if isinstance(op, dict) and "responses" in op:
                        op["deprecated"] = True  # fleet's old prefix, kept for old clients
            paths[prefix + rel] = ops
    paths.update(_dashboard())
    paths["/peer/v1/etcd"] = {"get": {
        "summary": "fleetds asking each other whether they reach etcd (fleetd/api/peer.py)",
        "responses": {"200": _json(_ref("PeerAnswer"), "this machine's answer, as of now"),
                      "404": _error("no presence on this fleetd (it is not a cluster member)")},
    }}
    paths["/peer/v1/quiet"] = {"get": {
        "summary": ("seconds this fleetd has been in touch with etcd without a gap (0 while cut off); "
                    "the engine asks it before moving a lone lost machine's units early (fleetd/engine/hold.py)"),
        "responses": {"200": _json(_ref("PeerQuiet"), "this machine's figure, as of now"),
                      "404": _error("no presence on this fleetd (it is not a cluster member)")},
    }}
    paths["/metrics"] = {"get": {
        "summary": "Prometheus metrics of this fleetd (and cluster gauges)",
        "responses": {"200": {"description": "Prometheus text format",
                              "content": {"text/plain": {"schema": _S}}},
                      "404": _error("metrics are disabled")},
    }}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "fleetd HTTP API",
            "version": __version__,
            "description": (
                "fleet's API v1 (wire-compatible with coreos/fleet) plus fleetd's extensions. "
                "Errors use fleet's envelope {\"error\":{\"code\",\"message\"}}. Read-only clients may "
                "GET; everything else needs the operator role (docs/api.md, 403 otherwise)."),
        },
        "paths": paths,
        "components": {"schemas": copy.deepcopy(SCHEMAS)},
    }


def main() -> None:
    print(json.dumps(openapi_document(), indent=2, sort_keys=False))


if __name__ == "__main__":
    main()
