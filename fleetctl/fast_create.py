"""The writes of fleetctl's unit fast path (fleetctl/fast_units.py): creating units (one
`POST /units` for several, docs/api.md) and setting desired states, with the answers and
errors of the full CLI's API driver."""

from __future__ import annotations

from fleetctl.fast_http import API_PREFIX, Api, Failed, quote_name
from fleetctl.quickunit import go_json


def create(api: Api, paths: list[str], bodies: list[bytes]) -> list:
    """client.create_units: (status, body) per unit as its `PUT If-None-Match: *` answers. Several
    go in one `POST /units` (beyond fleet, docs/api.md), which the API writes in one transaction:
    the engine places them in one pass, each node starts its share in one pass (30 PUTs reached
    fleetd over 10-50 ms, in 2-3 transactions). Fleet's own API, an older fleetd: the PUTs."""
    if len(paths) > 1:
        status, raw = api.one("POST", f"{API_PREFIX}/units", b'{"units":[' + b",".join(bodies) + b"]}")
        if status not in (200, 404, 405, 501):
            raise api.error("POST", f"{API_PREFIX}/units", status, raw)
        if status == 200:
            from fleetctl.lean import loads

            try:
                answers = [(int(r["status"]), _error_body(r["error"]) if r.get("error") else b"")
                           for r in loads(raw)["results"]]
            except (ValueError, KeyError, TypeError):
                answers = []
            if len(answers) != len(paths):
                raise Failed(f"Error: fleet API POST {API_PREFIX}/units: not one result per unit")
            return answers
    return api.many([("PUT", p, b, ("If-None-Match: *",)) for p, b in zip(paths, bodies)])


def _error_body(error) -> bytes:
    """The body a create-only PUT would have answered with this error (read by error_message)."""
    import json

    return json.dumps({"error": error}).encode()


def set_states(api: Api, names: list[str], state: str) -> None:
    """client.set_desired_state: a PUT of the desired state per unit; Failed("Error: ...")."""
    paths = [f"{API_PREFIX}/units/{quote_name(n)}" for n in names]
    answers = api.many([("PUT", p, go_json({"name": n, "desiredState": state}), ()) for n, p in zip(names, paths)])
    for name, path, answer in zip(names, paths, answers):
        if isinstance(answer, Exception):
            raise answer
        if answer[0] not in (200, 201, 204):
            error = api.error("PUT", path, *answer)
            if answer[0] == 409 and "does not exist" in str(error):
                error = Failed(f"Error: unit {name} not found")
            raise error
