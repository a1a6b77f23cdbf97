"""The writes of fleetctl's unit fast path (fleetctl/fast_units.py): creating units (one
`POST /units` for several, docs/api.md) and setting desired states, with the answers and
errors of the full CLI's API driver; and the creations tried before any read: a lone unit
file (`PUT If-None-Match: *`), several (`POST /units` with `createAll`: all or none, the
existing units in a 409's answer), each of which writes nothing when a unit exists."""

from __future__ import annotations

import os

from fleetctl.fast_http import API_PREFIX, Api, Failed, NotFast, quote_name
from fleetctl.lean import loads
from fleetctl.quickunit import go_json, is_plain_name, mangle, quick_options, wire_options

REQUIREMENT_SECTIONS = ("X-Fleet", "X-Container", "X-Service")
MAX_CREATE_ALL = 60  # units of one `createAll` (fleetd/api/resources.py, docs/api.md)


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


def local_options(arg: str) -> list | None:
    """The options of the local unit file `arg` (None: no such file); NotFast when it cannot be
    read, says nothing or has [X-Fleet] requirements (the full CLI's)."""
    if not os.path.exists(arg):
        return None
    try:
        with open(arg, "rb") as f:
            options = quick_options(f.read())
    except OSError:
        raise NotFast() from None
    if not options or any(o[0] in REQUIREMENT_SECTIONS for o in options):
        raise NotFast()
    return options


def create_lone(api: Api, args: list[str], state: str | None) -> str | None:
    """A lone local unit file: created only if absent before any read (what resolve + create
    would do for a new unit, one round trip less); its name if it was created (201), None if
    it exists (412: nothing written, the usual path follows); NotFast on any other answer."""
    name = mangle(args[0]) if len(args) == 1 else ""
    if not name or not is_plain_name(name) or args[0].endswith("/"):
        return None
    options = local_options(args[0])
    if options is None:
        return None
    body = go_json({"name": name, "desiredState": state or "inactive", "options": wire_options(options)})
    try:
        status, _ = api.one("PUT", f"{API_PREFIX}/units/{quote_name(name)}", body, ("If-None-Match: *",))
    except Failed:
        raise NotFast() from None
    if status not in (201, 412):
        raise NotFast()
    return name if status == 201 else None


def create_all(api: Api, args: list[str], state: str | None) -> tuple[dict[str, dict] | None, list[str] | None]:
    """Several local unit files: created together if none of them exists, before any read
    (`POST /units` with `createAll`, docs/api.md). (None, their names) if they were created;
    (the named units that exist, None) if some existed (nothing written: the usual path follows
    without a lookup of its own); (None, None) for anything else (an older server, an invalid
    unit: nothing written, the usual path follows)."""
    names = [mangle(a) for a in args]
    if (not 2 <= len(args) <= MAX_CREATE_ALL or len(set(names)) != len(names)
            or not all(map(is_plain_name, names)) or any(a.endswith("/") for a in args)):
        return None, None
    bodies = []
    for arg, name in zip(args, names):
        options = local_options(arg)
        if options is None:
            return None, None  # a unit of the registry named: the lookup says which
        bodies.append(go_json({"name": name, "desiredState": state or "inactive", "options": wire_options(options)}))
    try:
        status, raw = api.one("POST", f"{API_PREFIX}/units", b'{"createAll":[' + b",".join(bodies) + b"]}")
    except Failed:
        raise NotFast() from None
    try:
        answer = loads(raw) if status in (200, 409) else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return None, None
    if status == 200:
        results = answer.get("results")
        if (isinstance(results, list) and len(results) == len(names)
                and all(isinstance(r, dict) and r.get("status") == 201 and r.get("name") == n
                        for r, n in zip(results, names))):
            return None, names
        raise Failed(f"Error: fleet API POST {API_PREFIX}/units: not one result per unit")
    found = answer.get("units")
    if not isinstance(found, list) or not all(isinstance(u, dict) and u.get("name") in names for u in found):
        return None, None
    return {u["name"]: u for u in found}, None
