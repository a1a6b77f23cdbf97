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


_SCAN = json.JSONDecoder().scan_once


def loads(raw: bytes) -> object:
    """json.loads(raw). A JSON object in UTF-8 (every value the project writes) is read with
    the decoder's scanner straight away: json.loads would first guess the encoding and match
    whitespace around it in Python (~2/3 of its time for a placement); anything else, or
    anything the scanner does not read to the end, goes to json.loads (its answer or error)."""
    if raw[:1] == b"{" and raw[1:2] != b"\x00":   # json.detect_encoding's "utf-8" for these
        try:
            text = raw.decode("utf-8", "surrogatepass")
            value, end = _SCAN(text, 0)
        except (StopIteration, ValueError):   # not UTF-8 or not JSON: json.loads says which
            pass
        else:
            if end == len(text):
                return value
    return json.loads(raw)


def plain(text: str) -> bool:
    """Whether dumps() writes `text` as it is (printable ASCII without quote or backslash)."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def job_value(name: str, unit_hash: str, desired: str) -> bytes:
    """A unit's job record: {"name","hash","desiredState"}."""
    if plain(name) and plain(unit_hash) and plain(desired):   # dumps()'s bytes, formatted
        return f'{{"desiredState":"{desired}","hash":"{unit_hash}","name":"{name}"}}'.encode()
    return dumps({"name": name, "hash": unit_hash, "desiredState": desired})
