"""fleetd/registry/records.py `loads` and codec.py `encode_target`: the quick paths for the
values the engine reads and writes per unit give exactly what json.loads / dumps give (answer or
error), for any input (hypothesis properties)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from _depth import examples
from fleetd.model import DesiredState
from fleetd.registry import codec
from fleetd.registry.records import dumps, job_value, loads

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10)


def _outcome(function, raw):
    try:
        return ("value", function(raw))
    except ValueError as exc:
        return ("error", type(exc).__name__)


@settings(max_examples=examples(500), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.text(max_size=8), json_values, max_size=4).map(lambda v: json.dumps(v, ensure_ascii=False).encode()),
    st.binary(max_size=40).map(lambda b: b"{" + b),
    st.tuples(st.dictionaries(st.text(max_size=5), st.integers(), max_size=3), st.sampled_from(["", " ", "\n", " x", "}", "\x00"]))
    .map(lambda p: (json.dumps(p[0]) + p[1]).encode()),
    st.binary(max_size=20),
))
def test_loads_is_json_loads(raw):
    assert _outcome(loads, raw) == _outcome(json.loads, raw)


@pytest.mark.parametrize("raw", [b'{"a":1}', b'{"a":1} ', b'{"a":1}x', b'{"a"', b'{\x00', b'\xef\xbb\xbf{"a":1}',
                                 '{"é":"ü"}'.encode(), b'{"a":"\xff"}', b'{"s":"\\ud800"}'])
def test_loads_edges(raw):
    assert _outcome(loads, raw) == _outcome(json.loads, raw)


@settings(max_examples=examples(500), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.text(max_size=45), st.text(alphabet="0123456789abcdef", min_size=40, max_size=40)),
       st.sampled_from(list(DesiredState)))
def test_encode_target_is_dumps(unit_hash, state):
    assert codec.encode_target(unit_hash, state) == dumps({"hash": unit_hash, "desiredState": state.value})
    assert codec.decode_placement("a.service", "m", codec.encode_target(unit_hash, state)).hash == unit_hash


@settings(max_examples=examples(500), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.text(max_size=20), st.text(alphabet="abc-_.@:\\\"\x7f\x1f é", max_size=20)),
       st.one_of(st.text(max_size=45), st.text(alphabet="0123456789abcdef", min_size=40, max_size=40)),
       st.sampled_from([s.value for s in DesiredState] + ["", "x\"y"]))
def test_job_value_is_dumps(name, unit_hash, desired):
    assert job_value(name, unit_hash, desired) == dumps({"name": name, "hash": unit_hash, "desiredState": desired})
