"""The JSON of registry values on the standard library alone (the wire format stored in etcd;
docs/registry.md). fleetd/registry/codec.py builds its typed encoders on these; fleetctl's etcd
fast path (fleetd/registry/gateway.py) uses them directly, without fleetd.model."""

from __future__ import annotations

import json

MAX_TXN_OPS = 120  # etcd's default --max-txn-ops is 128; keep room for compares
#: Rounds of a compare-and-swap before it gives up with UnitConflict.
CAS_ATTEMPTS = 10


_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True)  # json.dumps made one per call


def dumps(value: object) -> bytes:
    return _ENCODER.encode(value).encode()


def loads(raw: bytes) -> object:
    return json.loads(raw)


def job_value(name: str, unit_hash: str, desired: str) -> bytes:
    """A unit's job record: {"name","hash","desiredState"}."""
    return dumps({"name": name, "hash": unit_hash, "desiredState": desired})
