"""fleetd/unit/file.py `UnitFile.parse_stored`: a body read from the registry under its hash
keeps its stored text and hash when they match, and is exactly `parse()` in every respect that
callers see (options, serialization, hash) whenever the stored text is a serialization."""

from __future__ import annotations

import hashlib

from hypothesis import HealthCheck, given, settings, strategies as st

from _depth import examples
from fleetd.errors import UnitFileError
from fleetd.unit import UnitFile
from fleetd.unit.file import _parse_plain

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


# -- the plain-text path (fleetd/unit/file.py `_parse_plain`) ------------------------------

tricky = st.lists(st.sampled_from(list("[]=#; \t\\\r\nab") + ["\u00a0", "\u2028", "\x00", "\x1b", "\ufeff", "\u00e9",
                                                                "Unit", "Service", "x=y", "\n["]),
                  max_size=40).map("".join)


def _parse_or_error(raw: bytes):
    try:
        return UnitFile.parse(raw)
    except UnitFileError as exc:
        return str(exc)


@settings(max_examples=examples(1000), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(tricky, tricky.map(lambda t: "[Unit]\n" + t), tricky.map(lambda t: "[Service]\nA=b\n" + t + "\nC=d\n")))
def test_the_plain_path_reads_what_parse_reads_or_leaves_it_to_parse(text):
    raw = text.encode()
    plain = _parse_plain(raw)
    if plain is not None:
        assert plain == _parse_or_error(raw)
    stored = UnitFile.parse_stored(raw, hashlib.sha1(raw).hexdigest()) if plain is not None else None
    assert stored is None or stored == plain


@settings(max_examples=examples(300), deadline=None, suppress_health_check=list(HealthCheck))
@given(options)
def test_every_serialization_takes_the_plain_path(opts):
    unit = UnitFile.from_options(opts)
    assert _parse_plain(unit.serialize().encode()) == unit


def test_what_the_plain_path_leaves_to_parse():
    for text in ("# comment\n[Unit]\nA=b\n", "[Unit]\nA = b\n", "[Unit]\nA=b \n", "[Unit]\n A=b\n",
                 "[Unit]\nA=b\\\n c\n", "[Unit]\r\nA=b\r\n", "A=b\n", "[Unit] x\nA=b\n", "[Unit]\nAb\n",
                 "\ufeff[Unit]\nA=b\n", "[Unit]\nA=\x1b\n", "[Unit]\nA=" + "x" * 3000 + "\n"):
        assert _parse_plain(text.encode()) is None, text
    assert _parse_plain(b"\xff[Unit]\n") is None
