"""fleet API v1 resources: /units, /state, /machines (handlers mirror fleet's api/*.go)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from aiohttp import web

from fleetd.api.context import HttpError, ctx_of
from fleetd.wire import (
    PageToken,
    WireError,
    go_json,
    machine_to_wire,
    page_token_from_query,
    parse_unit_request,
    state_to_wire,
    unit_infos,
    unit_info,
    unit_to_wire,
)
from fleetd.errors import UnitError, UnitFileError, UnitNotFound
from fleetd.model import DesiredState, Unit
from fleetd.unit.file import UnitFile
from fleetd.unit.name import is_valid_unit_name, parse_unit_name
from fleetd.unit.requirements import validate_unit

METADATA_PATH = re.compile(r"^/([^/]+)/metadata/([A-Za-z0-9_.-]+)$")
DRAINING_PATH = re.compile(r"^/([^/]+)/draining$")  # beyond fleet


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=go_json(data), content_type="application/json")


def no_content(status: int = 204, *, json_type: bool = False) -> web.Response:
    response = web.Response(status=status)
    if json_type:  # fleet's PATCH /machines answers 204 with a JSON content type
        response.headers["Content-Type"] = "application/json"
    return response


def _token(request: web.Request) -> PageToken:
    try:
        return page_token_from_query(request.query.getall("nextPageToken", []), ctx_of(request).token_limit)
    except WireError as exc:
        raise HttpError(400, str(exc)) from None


def _page(key: str, items: list, token: PageToken) -> dict[str, Any]:
    """A page in fleet's field order: MachinePage is {machines, nextPageToken}, the others
    {nextPageToken, <items>}; both fields are left out when empty."""
    chosen, nxt = token.slice(items)
    page: dict[str, Any] = {}
    if key == "machines" and chosen:
        page[key] = chosen
    if nxt is not None:
        page["nextPageToken"] = nxt.encode()
    if key != "machines" and chosen:
        page[key] = chosen
    return page


def go_quote(text: str) -> str:
    """Go's %q for the ASCII-printable texts we quote in messages."""
    return json.dumps(text, ensure_ascii=False)


# ---------------------------------------------------------------------------- /units


async def _unit_entities(request: web.Request) -> list[dict[str, Any]]:
    reg = ctx_of(request).registry
    units, placements, states = await asyncio.gather(reg.list_units(), reg.placements(), reg.unit_states())
    return [unit_to_wire(info) for info in unit_infos(units, placements, states)]


async def unit_entity(request: web.Request, name: str) -> dict[str, Any] | None:
    record = (await ctx_of(request).registry.unit_records([name])).get(name)
    if record is None:
        return None
    return unit_to_wire(unit_info(record.unit, record.placement, record.states))


async def units_collection(request: web.Request) -> web.Response:
    if request.method == "POST":  # beyond fleet: many creations in one request (docs/api.md)
        return await _create_many(request)
    if request.method != "GET":
        raise HttpError(405, "only GET supported against this resource")
    token = _token(request)
    names = request.query.getall("unitName", [])
    if names:  # beyond fleet: only the named units, one page (docs/api.md)
        found = await units_named(request, names)
        return json_response({"units": found} if found else {})
    return json_response(_page("units", await _unit_entities(request), token))


async def units_named(request: web.Request, names: list[str]) -> list[dict[str, Any]]:
    """The named units that exist, as GET /units/<name> shows them, in the order asked, read in
    one registry transaction (no unit has an invalid name)."""
    names = [n for n in dict.fromkeys(names) if is_valid_unit_name(n)]
    records = await ctx_of(request).registry.unit_records(names) if names else {}
    return [unit_to_wire(unit_info(r.unit, r.placement, r.states)) for n in names if (r := records.get(n))]


async def unit_item(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if request.method == "GET":
        entity = await unit_entity(request, name)
        if entity is None:
            raise HttpError(404, "unit does not exist")
        return json_response(entity)
    if request.method == "DELETE":
        return await _destroy(request, name)
    if request.method == "PUT":
        return await _set(request, name)
    raise HttpError(405, "only GET, PUT and DELETE supported against this resource")


def check_content_type(request: web.Request) -> None:
    values = request.headers.getall("Content-Type", [])
    if len(values) != 1:
        raise HttpError(415, f"expected 1 Content-Type, got {len(values)}")
    if values[0].split(";", 1)[0].strip() != "application/json":
        raise HttpError(415, "only acceptable Content-Type is application/json")


async def read_json(request: web.Request, what: str = "unable to decode body") -> Any:
    raw = await request.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise HttpError(400, f"{what}: body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise HttpError(400, f"{what}: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _desired(text: str) -> DesiredState:
    try:
        return DesiredState.parse(text)
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None


def _refuse_template(name: str, state: DesiredState) -> None:
    if state is not DesiredState.INACTIVE and parse_unit_name(name).is_template:
        raise HttpError(400, f"cannot activate template {go_quote(name)}")


def _unit_file(name: str, options) -> UnitFile:
    try:
        file = UnitFile.from_options(options, source=f"unit {name}")
        validate_unit(file, name)
    except UnitError as exc:
        raise HttpError(400, str(exc)) from None
    return file


MAX_CREATE_MANY = 1000  # units of one POST /units


async def _create_many(request: web.Request) -> web.Response:
    """`POST /units` (beyond fleet, docs/api.md): `{"units": [<unit as PUT /units/<name> takes
    it>, ...]}`, each created only if absent (a `PUT` with `If-None-Match: *`); 200 with
    `{"results": [{"name", "status"[, "error"]}, ...]}` in the request's order, each status (and
    error envelope) the one that `PUT` would have answered. The creations share the API's
    transactions (fleetd/api/batching.py): all of one request are queued in one loop round, so
    they go to etcd together and the engine places them in one pass."""
    check_content_type(request)
    body = await read_json(request)
    if isinstance(body, dict) and "createAll" in body:
        return await _create_all(request, body["createAll"])
    items = body.get("units") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise HttpError(400, 'expected {"units": [...]} with at least one unit')
    if len(items) > MAX_CREATE_MANY:
        raise HttpError(400, f"at most {MAX_CREATE_MANY} units per request, got {len(items)}")

    async def one(item: Any) -> dict[str, Any]:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            return {"name": "", "status": 400, "error": {"code": 400, "message": "unit name missing"}}
        try:
            response = await _set_parsed(request, name, item, create_only=True)
        except HttpError as exc:
            return {"name": name, "status": exc.code, "error": {"code": exc.code, "message": exc.message}}
        return {"name": name, "status": response.status}

    return json_response({"results": list(await asyncio.gather(*(one(i) for i in items)))})


MAX_CREATE_ALL = 60  # units of one `createAll`: one etcd transaction (registry MAX_TXN_OPS // 2)


def _new_unit(item: Any) -> Unit:
    """A unit of `createAll`, checked as a create-only PUT of a new unit checks it (HttpError)."""
    try:
        req = parse_unit_request(item)
    except WireError as exc:
        raise HttpError(400, str(exc)) from None
    try:
        parse_unit_name(req.name)
    except UnitError as exc:
        raise HttpError(400, str(exc)) from None
    if not req.options:
        raise HttpError(409, f"unit {req.name}: options field empty")
    file = _unit_file(req.name, req.options)
    state = _desired(req.desired_state) if req.desired_state else DesiredState.INACTIVE
    _refuse_template(req.name, state)
    return Unit(req.name, file, state)


async def _create_all(request: web.Request, items: Any) -> web.Response:
    """`POST /units` with `{"createAll": [<unit as PUT /units/<name> takes it>, ...]}` (beyond
    fleet, docs/api.md): all the units created in one transaction if none of them exists (200,
    each result 201), else nothing written: 409 with the named units that exist, as `GET
    /units?unitName=` shows them (a client creating its new units learns in one round trip which
    of them were not new, and has written nothing). 400 for an invalid unit (nothing written)."""
    if not isinstance(items, list) or not items or len(items) > MAX_CREATE_ALL:
        raise HttpError(400, f'expected {{"createAll": [...]}} with 1 to {MAX_CREATE_ALL} units')
    units = [_new_unit(item) for item in items]
    names = [u.name for u in units]
    if len(set(names)) != len(names):
        raise HttpError(400, "a unit named twice in createAll")
    if await ctx_of(request).registry.create_units(units, all_or_none=True):
        return json_response({"results": [{"name": n, "status": 201} for n in names]})
    existing = await units_named(request, names)
    return json_response({"error": {"code": 409, "message": "units exist already; nothing created"},
                          "units": existing}, 409)


async def _set(request: web.Request, item: str) -> web.Response:
    """fleet's unitsResource.set: create (201), replace with a different body (201), change the
    desired state (204); 409 for an unknown unit without options or a known one without
    desiredState; 400 for anything invalid; 415 without an application/json body."""
    check_content_type(request)
    create_only = request.headers.get("If-None-Match", "").strip() == "*"  # beyond fleet
    return await _set_parsed(request, item, await read_json(request), create_only)


async def _set_parsed(request: web.Request, item: str, body: Any, create_only: bool) -> web.Response:
    try:
        req = parse_unit_request(body)
    except WireError as exc:
        raise HttpError(400, str(exc)) from None
    name = req.name or item
    if name != item:
        raise HttpError(400, f"name in URL {go_quote(item)} differs from unit name in request body {go_quote(name)}")
    try:
        parse_unit_name(name)
    except UnitError as exc:
        raise HttpError(400, str(exc)) from None
    reg = ctx_of(request).registry
    if create_only and req.options:
        # no read first: the create is conditional on the unit's absence (412 otherwise), and
        # concurrent creates share transactions (fleetd/api/batching.py)
        try:
            file = _unit_file(name, req.options)
            state = _desired(req.desired_state) if req.desired_state else DesiredState.INACTIVE
            _refuse_template(name, state)
        except HttpError:
            pass  # the answer depends on whether the unit exists (412 first): the path below
        else:
            if await _batcher(request).create(Unit(name, file, state)):
                return no_content(201)
            raise HttpError(412, f"unit {name} already exists")
    existing = await reg.get_unit(name)
    if existing is not None and create_only:
        raise HttpError(412, f"unit {name} already exists")

    if existing is None:
        if not req.options:
            raise HttpError(409, "unit does not exist and options field empty")
        file = _unit_file(name, req.options)
        state = _desired(req.desired_state) if req.desired_state else DesiredState.INACTIVE
        _refuse_template(name, state)
        if not await _batcher(request).create(Unit(name, file, state)):
            if create_only:
                raise HttpError(412, f"unit {name} already exists")
            raise HttpError(409, f"unit {name} was created concurrently; try again")
        return no_content(201)

    if req.options:
        file = _unit_file(name, req.options)
        if file.hash != existing.hash:
            # as fleet, the unit is created anew: the desired state of the request, else
            # inactive (fleet's fleetctl --replace waits for "inactive", then starts it again)
            state = _desired(req.desired_state) if req.desired_state else DesiredState.INACTIVE
            _refuse_template(name, state)
            await reg.replace_unit(Unit(name, file, state))
            return no_content(201)

    if not req.desired_state:
        raise HttpError(409, "must provide DesiredState to update existing unit")
    state = _desired(req.desired_state)
    _refuse_template(name, state)
    try:
        await reg.set_desired_state([name], state)
    except UnitNotFound:
        raise HttpError(404, "unit does not exist") from None
    except UnitError as exc:
        raise HttpError(400, str(exc)) from None
    return no_content(204)


def _batcher(request: web.Request):
    from fleetd.api.batching import CreateBatcher

    ctx = ctx_of(request)
    batcher = ctx.extras.get("create_batcher")
    if batcher is None:
        batcher = ctx.extras["create_batcher"] = CreateBatcher(ctx.registry.create_units)
    return batcher


async def _destroy(request: web.Request, name: str) -> web.Response:
    reg = ctx_of(request).registry
    # no read of the unit first: a unit whose body cannot be read (written around the API, see
    # fleetd.unit.control) can still be destroyed
    if not await reg.destroy_units([name]):
        raise HttpError(404, "unit does not exist")
    return no_content(204)


# ---------------------------------------------------------------------------- /state


async def state_collection(request: web.Request) -> web.Response:
    if request.method != "GET":
        raise HttpError(405, "only GET supported against this resource")
    token = _token(request)
    machine_id = next(iter(request.query.getall("machineID", [])), "")
    unit_name = next(iter(request.query.getall("unitName", [])), "")
    states = await ctx_of(request).registry.unit_states(name=unit_name or None, machine_id=machine_id or None)
    if unit_name:  # the registry reads by prefix; fleet compares names exactly
        states = [s for s in states if s.name == unit_name]
    return json_response(_page("states", [state_to_wire(s) for s in states], token))


async def state_item(request: web.Request) -> web.Response:
    if request.method != "GET":
        raise HttpError(405, "only GET supported against this resource")
    name = request.match_info["name"]
    machine_id = request.query.get("machineID", "")  # beyond fleet: choose the machine
    states = await ctx_of(request).registry.unit_states(name=name, machine_id=machine_id or None)
    states = [s for s in states if s.name == name]
    if not states:
        raise HttpError(404, "unit state does not exist")
    return json_response(state_to_wire(states[0]))


# ---------------------------------------------------------------------------- /machines


async def machines_collection(request: web.Request) -> web.Response:
    if request.method == "GET":
        token = _token(request)
        machines = await ctx_of(request).registry.list_machines()
        return json_response(_page("machines", [machine_to_wire(m) for m in machines], token))
    if request.method == "PATCH":
        return await _patch_machines(request)
    raise HttpError(405, "only GET and PATCH supported against this resource")


def _op_value(op: dict[str, Any]) -> str:
    """fleet's code decodes `value` as {"value": "x"}; its documentation shows a bare string.
    Both are accepted."""
    value = op.get("value", op.get("Value"))
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        inner = value.get("value", value.get("Value", ""))
        if isinstance(inner, str):
            return inner
    raise HttpError(400, 'invalid value: expected {"value": "<string>"}')


async def _patch_machines(request: web.Request) -> web.Response:
    ops = await read_json(request, "invalid JSON patch")
    if not isinstance(ops, list) or not all(isinstance(op, dict) for op in ops):
        raise HttpError(400, "invalid JSON patch: expected a list of operations")
    planned: list[tuple[str, str, str | None, str]] = []  # (machine, key, value, kind)
    for op in ops:
        kind = op.get("op", op.get("Op"))
        if kind not in ("add", "remove", "replace"):
            raise HttpError(400, "invalid op: expect add, remove, or replace")
        path = op.get("path", op.get("Path"))
        path = path if isinstance(path, str) else ""
        value = _op_value(op)
        if (m := METADATA_PATH.match(path)) is not None:
            if kind != "remove" and not value:
                raise HttpError(400, "invalid value: add and replace require a value")
            planned.append((m.group(1), m.group(2), None if kind == "remove" else value, "metadata"))
        elif (m := DRAINING_PATH.match(path)) is not None:
            drain = kind != "remove" and value.lower() not in ("false", "0", "no")
            planned.append((m.group(1), "", "1" if drain else None, "draining"))
        else:
            raise HttpError(400, "machine metadata path invalid")
    reg = ctx_of(request).registry
    for machine_id, key, value, kind in planned:  # in order, after validating all of them
        if kind == "metadata":
            await reg.set_machine_metadata(machine_id, key, value)
        else:
            await reg.set_draining(machine_id, value is not None)
    return no_content(204, json_type=True)
