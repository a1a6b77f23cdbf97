"""fleet API v1 wire format: entities, page tokens and JSON encoding as fleet's Go server emits.

Used by the server (fleetd.api) and the clients (fleetctl's drivers): it sits at the model layer
(it imports only fleetd.model, fleetd.unit and fleetd.jobstate), so a client never imports a
server module. `UnitInfo` is the one assembly of "a unit as fleet's API shows it" from the
registry's records (the API's /units and fleetctl's etcd driver both use `unit_info(s)`). Field names, field order and
"omitempty" follow fleet's generated schema (schema/v1-gen.go), so a Go client built from fleet's
discovery document decodes our responses exactly as it decodes fleet's.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, TypeVar

from fleetd.jobstate import current_state_of, current_states
from fleetd.model import DesiredState, Machine, Placement, Resources, Unit, UnitState
from fleetd.unit.file import UnitFile, UnitOption

if TYPE_CHECKING:
    import ssl

T = TypeVar("T")

_URLSAFE_B64 = re.compile(r"[A-Za-z0-9_-]*={0,2}")


class WireError(ValueError):
    """A request body or token that does not follow the wire format (the API answers 400)."""


# ---------------------------------------------------------------------------- JSON like Go


def go_json(value: Any) -> bytes:
    """Compact JSON as Go's encoding/json writes it: UTF-8, with <, >, & and U+2028/9 escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    text = (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    return text.encode("utf-8")


def _omitempty(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    return {k: v for k, v in pairs if v not in ("", None, [], {}, 0, False)}


# ---------------------------------------------------------------------------- page tokens


@dataclass(frozen=True)
class PageToken:
    """fleet's nextPageToken: URL-safe base64 of little-endian {uint16 Limit, uint16 Page}."""

    limit: int
    page: int = 1

    def encode(self) -> str:
        return base64.urlsafe_b64encode(struct.pack("<HH", self.limit, self.page)).decode()

    def next(self) -> "PageToken":
        return PageToken(self.limit, self.page + 1)

    @classmethod
    def decode(cls, text: str, limit: int) -> "PageToken":
        """Parse and validate a token as fleet's findNextPageToken does; WireError otherwise."""
        if not _URLSAFE_B64.fullmatch(text) or len(text) % 4:
            raise WireError(f"invalid nextPageToken {text!r}: not padded URL-safe base64")
        try:
            raw = base64.urlsafe_b64decode(text)
        except (binascii.Error, ValueError):
            raise WireError(f"invalid nextPageToken {text!r}: not padded URL-safe base64") from None
        if len(raw) < 4:
            raise WireError(f"invalid nextPageToken {text!r}: unexpected EOF")
        tok_limit, page = struct.unpack("<HH", raw[:4])
        if tok_limit != limit:
            raise WireError(f"token limit must be {limit}")
        if page == 0:
            raise WireError("token page must be greater than zero")
        return cls(tok_limit, page)

    def slice(self, items: Sequence[T]) -> tuple[list[T], "PageToken | None"]:
        """fleet's extract*PageData: the page's items and the next token (also when the page is
        exactly full, as fleet does: the following page is then empty and has no token)."""
        start = (self.page - 1) * self.limit
        stop = self.page * self.limit
        if start >= len(items):
            return [], None
        if stop > len(items):
            return list(items[start:]), None
        return list(items[start:stop]), self.next()


def page_token_from_query(values: Sequence[str], limit: int) -> PageToken:
    if len(values) > 1:
        raise WireError("too many values for page token")
    if not values:
        return PageToken(limit)
    return PageToken.decode(values[0], limit)


# ---------------------------------------------------------------------------- a unit as the API shows it


@dataclass(frozen=True)
class UnitInfo:
    """A unit as fleet's API shows it (schema.Unit): desired and current state, target machine."""

    name: str
    file: UnitFile
    desired_state: DesiredState
    current_state: str  # inactive / loaded / launched; "" for global units
    machine_id: str  # target machine, "" if unscheduled or global
    is_global: bool

    @property
    def hash(self) -> str:
        return self.file.hash


def unit_info(unit: Unit, placement: Placement | None, states: Sequence[UnitState]) -> UnitInfo:
    """A unit's API view from its registry records (fleet's mapJobToSchema)."""
    current, machine = current_state_of(unit, placement, states)
    return UnitInfo(unit.name, unit.file, unit.desired_state, current, machine, unit.is_global)


def unit_infos(units: Sequence[Unit], placements: Mapping[str, Placement],
               states: Sequence[UnitState]) -> list[UnitInfo]:
    """Every unit's API view from one read of units, the schedule and the published states."""
    return [UnitInfo(u.name, u.file, u.desired_state, current, machine, u.is_global)
            for u, current, machine in current_states(units, placements, states)]


# ---------------------------------------------------------------------------- entities -> wire


def options_to_wire(file: UnitFile) -> list[dict[str, str]]:
    return [_omitempty((("name", o.name), ("section", o.section), ("value", o.value))) for o in file.options]


def unit_to_wire(info: UnitInfo) -> dict[str, Any]:
    return _omitempty((
        ("currentState", info.current_state),
        ("desiredState", info.desired_state.value),
        ("machineID", info.machine_id),
        ("name", info.name),
        ("options", options_to_wire(info.file)),
    ))


def state_to_wire(state: UnitState) -> dict[str, Any]:
    return _omitempty((
        ("hash", state.hash),
        ("machineID", state.machine_id),
        ("name", state.name),
        ("systemdActiveState", state.active_state),
        ("systemdLoadState", state.load_state),
        ("systemdSubState", state.sub_state),
    ))


def machine_to_wire(machine: Machine) -> dict[str, Any]:
    """fleet's Machine plus our extensions (ignored by fleet's clients): version, cpus, memory,
    draining; like fleet's own fields they are left out when empty."""
    return _omitempty((
        ("id", machine.id),
        ("metadata", dict(sorted(machine.metadata.items()))),
        ("primaryIP", machine.public_ip),
        ("version", machine.version),
        ("cpus", machine.capacity.cpu),
        ("memory", machine.capacity.memory),
        ("draining", machine.draining),
    ))


def error_body(code: int, message: str) -> bytes:
    return go_json({"error": {"code": code, "message": message}})


# ---------------------------------------------------------------------------- wire -> entities


def _str_field(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise WireError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def _go_key(data: Mapping[str, Any], key: str) -> Any:
    """Go's encoding/json matches object keys to struct fields case-insensitively."""
    if key in data:
        return data[key]
    lowered = key.lower()
    for k, v in data.items():
        if isinstance(k, str) and k.lower() == lowered:
            return v
    return None


def _fold(data: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {k: _go_key(data, k) for k in keys}


@dataclass(frozen=True)
class UnitRequest:
    """The body of PUT /units/<name> (a partial schema.Unit)."""

    name: str
    desired_state: str
    options: tuple[UnitOption, ...]


def parse_unit_request(data: Any) -> UnitRequest:
    if not isinstance(data, dict):
        raise WireError("unable to decode body: expected a JSON object (a Unit entity)")
    data = _fold(data, ("name", "desiredState", "options"))
    where = "unable to decode body"
    raw_options = data.get("options") or []
    if not isinstance(raw_options, list):
        raise WireError(f"{where}: field 'options' must be a list of UnitOption objects")
    options = []
    for i, raw in enumerate(raw_options):
        if not isinstance(raw, dict):
            raise WireError(f"{where}: options[{i}] must be an object with section, name and value")
        opt = _fold(raw, ("section", "name", "value"))
        options.append(UnitOption(_str_field(opt, "section", f"{where}: options[{i}]"),
                                  _str_field(opt, "name", f"{where}: options[{i}]"),
                                  _str_field(opt, "value", f"{where}: options[{i}]")))
    return UnitRequest(_str_field(data, "name", where), _str_field(data, "desiredState", where), tuple(options))


def unit_from_wire(data: Mapping[str, Any]) -> UnitInfo:
    """A Unit entity from a response."""
    req = parse_unit_request(data)
    file = UnitFile.from_options(req.options, source=f"unit {req.name}")
    desired = DesiredState.parse(req.desired_state or DesiredState.INACTIVE.value)
    unit = Unit(req.name, file, desired)
    return UnitInfo(unit.name, file, desired, _str_field(data, "currentState", "unit"),
                    _str_field(data, "machineID", "unit"), unit.is_global)


def state_from_wire(data: Mapping[str, Any]) -> UnitState:
    return UnitState(
        name=data.get("name", ""),
        machine_id=data.get("machineID", ""),
        hash=data.get("hash", ""),
        load_state=data.get("systemdLoadState", ""),
        active_state=data.get("systemdActiveState", ""),
        sub_state=data.get("systemdSubState", ""),
    )


def machine_from_wire(data: Mapping[str, Any]) -> Machine:
    return Machine(
        id=data.get("id", ""),
        public_ip=data.get("primaryIP", ""),
        metadata=dict(data.get("metadata") or {}),
        version=data.get("version", ""),
        capacity=Resources(float(data.get("cpus") or 0), int(data.get("memory") or 0)),
        draining=bool(data.get("draining", False)),
    )


# ---------------------------------------------------------------------------- TLS of API clients


def client_ssl_context(cafile: str | None, certfile: str | None, keyfile: str | None, *,
                       check_hostname: bool = False) -> "ssl.SSLContext":
    """TLS to a fleet API: the server must be signed by cafile (the system CAs without one); we
    present our certificate if given.

    Host names are not checked by default: fleet machines are addressed by IP and trusted by the
    cluster CA (set check_hostname for certificates issued per name)."""
    import ssl  # only for TLS endpoints: not on the unix socket's path

    from fleetd.errors import ConfigError

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        if cafile:
            ctx.load_verify_locations(cafile=cafile)
        else:
            ctx.load_default_certs()
        if certfile:
            ctx.load_cert_chain(certfile, keyfile or None)
    except (ssl.SSLError, OSError) as exc:
        files = ", ".join(f for f in (cafile, certfile, keyfile) if f)
        raise ConfigError(f"cannot load TLS files ({files}): {exc}") from None
    return ctx
