"""fleet API v1 discovery document (Google API discovery format), served at /fleet/v1/discovery.

Built from the entity field lists below rather than kept as a text blob, so it cannot drift from
what fleetd.wire emits. fleet ships it with rootUrl "$ENDPOINT/" for clients to replace; we
fill in the base URL the request came in on (over a unix socket there is no such URL, so the
placeholder stays, as fleet's clients expect).
"""

from __future__ import annotations

import copy
from typing import Any

STATES = ["inactive", "loaded", "launched"]


def _string(**extra: Any) -> dict[str, Any]:
    return {"type": "string", **extra}


def _page(item: str, key: str) -> dict[str, Any]:
    return {
        "id": f"{item}Page",
        "type": "object",
        "properties": {key: {"type": "array", "items": {"$ref": item}}, "nextPageToken": _string()},
    }


def _path_param() -> dict[str, Any]:
    return {"unitName": {"type": "string", "location": "path", "required": True}}


def _method(mid: str, description: str, http: str, path: str, *, params: dict | None = None,
            response: str | None = None, request: str | None = None) -> dict[str, Any]:
    method: dict[str, Any] = {"id": f"fleet.{mid}", "description": description, "httpMethod": http, "path": path}
    if params:
        method["parameters"] = params
        if any(p.get("location") == "path" for p in params.values()):
            method["parameterOrder"] = [k for k, p in params.items() if p.get("location") == "path"]
    if request:
        method["request"] = {"$ref": request}
    if response:
        method["response"] = {"$ref": response}
    return method


_QUERY_TOKEN = {"nextPageToken": {"type": "string", "location": "query"}}

_DOCUMENT: dict[str, Any] = {
    "kind": "discovery#restDescription",
    "discoveryVersion": "v1",
    "id": "fleet:v1",
    "name": "schema",
    "version": "v1",
    "title": "fleet API",
    "description": "",
    "documentationLink": "http://github.com/coreos/fleet",
    "protocol": "rest",
    "icons": {"x16": "", "x32": ""},
    "labels": [],
    "baseUrl": "$ENDPOINT/fleet/v1/",
    "basePath": "/fleet/v1/",
    "rootUrl": "$ENDPOINT/",
    "servicePath": "fleet/v1/",
    "batchPath": "batch",
    "parameters": {},
    "auth": {},
    "schemas": {
        "Machine": {
            "id": "Machine",
            "type": "object",
            "properties": {
                "id": _string(),
                "primaryIP": _string(),
                "metadata": {"type": "object", "properties": {}, "additionalProperties": _string()},
            },
        },
        "MachinePage": _page("Machine", "machines"),
        "UnitOption": {
            "id": "UnitOption",
            "type": "object",
            "properties": {"section": _string(), "name": _string(), "value": _string()},
        },
        "Unit": {
            "id": "Unit",
            "type": "object",
            "properties": {
                "name": _string(),
                "options": {"type": "array", "items": {"$ref": "UnitOption"}},
                "desiredState": _string(enum=STATES),
                "currentState": _string(enum=STATES),
                "machineID": _string(required=True),
            },
        },
        "UnitPage": _page("Unit", "units"),
        "UnitState": {
            "id": "UnitState",
            "type": "object",
            "properties": {k: _string() for k in (
                "name", "hash", "machineID", "systemdLoadState", "systemdActiveState", "systemdSubState")},
        },
        "UnitStatePage": _page("UnitState", "states"),
    },
    "resources": {
        "Machines": {"methods": {
            "List": _method("Machine.List", "Retrieve a page of Machine objects.", "GET", "machines",
                            params=dict(_QUERY_TOKEN), response="MachinePage"),
        }},
        "Units": {"methods": {
            "List": _method("Unit.List", "Retrieve a page of Unit objects.", "GET", "units",
                            params=dict(_QUERY_TOKEN), response="UnitPage"),
            "Get": _method("Unit.Get", "Retrieve a single Unit object.", "GET", "units/{unitName}",
                           params=_path_param(), response="Unit"),
            "Delete": _method("Unit.Delete", "Delete the referenced Unit object.", "DELETE", "units/{unitName}",
                              params=_path_param()),
            "Set": _method("Unit.Set", "Create or update a Unit.", "PUT", "units/{unitName}",
                           params=_path_param(), request="Unit"),
        }},
        "UnitState": {"methods": {
            "Get": _method("UnitState.Get", "Retrieve a page of a single UnitState object.", "GET",
                           "state/{unitName}", params=_path_param(), response="UnitState"),
            "List": _method("UnitState.List", "Retrieve a page of UnitState objects.", "GET", "state",
                            params={**_QUERY_TOKEN, "unitName": {"type": "string", "location": "query"},
                                    "machineID": {"type": "string", "location": "query"}},
                            response="UnitStatePage"),
        }},
    },
}


def discovery_document(root_url: str | None) -> dict[str, Any]:
    """The document with `$ENDPOINT` replaced by root_url (e.g. "http://10.0.0.1:49153"), or
    left in place when root_url is None."""
    doc = copy.deepcopy(_DOCUMENT)
    if root_url:
        root = root_url.rstrip("/")
        doc["rootUrl"] = f"{root}/"
        doc["baseUrl"] = f"{root}/fleet/v1/"
    return doc
