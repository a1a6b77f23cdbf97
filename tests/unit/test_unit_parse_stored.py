"""fleetd/unit/file.py `UnitFile.parse_stored`: a body read from the registry under its hash
keeps its stored text and hash when they match, and is exactly `parse()` in every respect that
callers see (options, serialization, hash) whenever the stored text is a serialization."""

from __future__ import annotations

import hashlib

from hypothesis import HealthCheck, given, settings, strategies as st

from _depth import examples
from fleetd.unit import UnitFile

names = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcxyz-_", min_size=1, max_size=12)
values = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\\"),
                 max_size=30).map(str.strip)
options = st.lists(st.tuples(st.sampled_from(["Unit", "Service", "X-Fleet", "Install"]), names, values), max_size=8)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=list(HealthCheck))
@given(options)
def test_a_stored_serialization_parses_as_parse_does(opts):
    unit = UnitFile.from_options(opts)
    raw = unit.serialize().encode()
    stored = UnitFile.parse_stored(raw, unit.hash)
    assert stored == UnitFile.parse(raw) == unit
    assert stored.serialize() == unit.serialize() and stored.hash == unit.hash
    assert "hash" in stored.__dict__  # taken from the key, not worked out again


def test_text_that_does_not_hash_to_its_key_is_worked_out_as_usual():
    text = "# a comment\n[Service]\nExecStart = /bin/true\n"
    stored = UnitFile.parse_stored(text.encode(), hashlib.sha1(b"something else").hexdigest())
    assert "hash" not in stored.__dict__
    assert stored.serialize() == "[Service]\nExecStart=/bin/true\n"
    assert stored.hash == hashlib.sha1(stored.serialize().encode()).hexdigest() == UnitFile.parse(text).hash


def test_non_ascii_text_keeps_its_characters():
    unit = UnitFile.parse("[Unit]\nDescription=caf\u00e9 \u2603\n")
    stored = UnitFile.parse_stored(unit.serialize().encode(), unit.hash)
    assert stored.serialize() == unit.serialize() and stored.hash == unit.hash
