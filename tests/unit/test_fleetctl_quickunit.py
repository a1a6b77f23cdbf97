"""fleetctl/quickunit.py's and fleetctl/fast_units.py's stdlib ports against the implementations they copy: the quick unit
file parser (fleetd.unit.file), name mangling and validation (fleetd.unit.name), the wire form
(fleetd.wire), the poll delays (fleetctl.client) and the command-line reading."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from _depth import examples

from fleetctl import fast_units as fu, quickunit as qu
from fleetctl.client import poll_delays
from fleetd.errors import UnitFileError
from fleetd.unit.file import _GO_SPACE, UnitFile
from fleetd.unit.name import is_valid_unit_name, mangle_unit_name
from fleetd.wire import go_json, options_to_wire

REPO = Path(__file__).resolve().parents[2]


def full_options(data: bytes):
    try:
        return [(o.section, o.name, o.value) for o in UnitFile.parse(data).options]
    except UnitFileError:
        return None


def check_same(data: bytes, must_read: bool) -> None:
    full = full_options(data)
    quick = qu.quick_options(data)
    if full is None:
        assert quick is None, data
        return
    if quick is None:
        assert not must_read, data
        return
    assert quick == full, data
    unit = UnitFile.parse(data)
    assert qu.serialize(quick) == unit.serialize() and qu.unit_hash(quick) == unit.hash
    assert qu.wire_options(quick) == options_to_wire(unit)


EXAMPLES = [
    b"[Service]\nExecStart=/bin/true\n",
    b"[Unit]\nDescription=x\n\n[Service]\nExecStart=/bin/sh -c \\\n  'sleep 1' \\\n\nType=simple\n",
    b"# c \\\nswallowed\n[A]\nk = v \n;x\n[B]\nk=\n[A]\nk2=v2",
    b"\xef\xbb\xbf[Unit]\nDescription=caf\xc3\xa9\xe2\x80\x83\n",
    b"[Service]\nExecStart=a\\\n",  # continuation at end of file
    b"[Service]\nExecStart=a\\ \n",  # a backslash and blanks: refused by both
    b"[Unit]\nDescription=" + b"x" * 3000 + b"\n",
    b"[Unit] junk\nA=b\n", b"A=b\n", b"[Unit\nA=b\n", b"[Unit]\nnoequals\n", b"",
    b"[Unit]\r\nA=b\r\n", b"[Unit]\nA=b\x00\n", b"\xff\xfe",
    b"[Service]\nExecStart=\\\n\n", b"[S]\n =\n", b"[S]\nA=\\\\\n",
]


@pytest.mark.parametrize("data", EXAMPLES)
def test_quick_parser_examples(data):
    check_same(data, must_read=b"\r" not in data and b"\x00" not in data)


def test_the_repositorys_unit_files_are_read_the_same():
    files = sorted((REPO / "units").glob("*.service"))
    assert files
    for path in files:
        check_same(path.read_bytes(), must_read=True)


TRICKY = st.sampled_from(list("[]#;=\\\"% \t\r\nabcXYZ09é\u2028\x85\ufeff\u3000\u2003\x00\x0b-@"))


@settings(max_examples=examples(400), deadline=None)
@given(st.text(alphabet=TRICKY, max_size=150))
def test_quick_parser_never_differs_on_arbitrary_text(text):
    check_same(text.encode("utf-8", "surrogatepass"), must_read=False)


BACKSLASH = "\\"
blank = st.sampled_from(["", " ", "\t", "  \u2003", "\u00a0"])
word = st.text(alphabet="abcXYZ09-_.:/ é<&>'\"%\u3000", min_size=0, max_size=12)


@st.composite
def unit_lines(draw):
    kind = draw(st.sampled_from(["section", "option", "option", "comment", "blank", "continued", "comment-cont"]))
    pad = draw(blank)
    if kind == "section":
        return f"{pad}[{draw(word).replace(']', '')}]{draw(blank)}"
    if kind == "option":
        return f"{pad}{draw(word).replace('=', '')}{draw(blank)}={draw(blank)}{draw(word)}{draw(blank)}"
    if kind == "continued":
        return f"{pad}{draw(word).replace('=', '')}={draw(word)}\\\n{draw(blank)}{draw(word)}{draw(st.sampled_from(['', BACKSLASH]))}"
    if kind == "comment":
        return f"{pad}{draw(st.sampled_from('#;'))}{draw(word)}"
    if kind == "comment-cont":
        return f"{pad}#{draw(word)}\\{draw(st.sampled_from(['', ' ']))}\n{draw(word)}"
    return pad


@settings(max_examples=examples(600), deadline=None)
@given(st.lists(unit_lines(), max_size=14), st.booleans())
def test_quick_parser_reads_what_the_parser_reads_without_cr_or_controls(lines, final_newline):
    text = "\n".join(["[Service]", *lines]) + ("\n" if final_newline else "")
    check_same(text.encode(), must_read=True)


def test_go_space_is_the_parsers():
    assert set(qu.GO_SPACE) == set(_GO_SPACE)


@settings(max_examples=examples(400), deadline=None)
@given(st.text(alphabet="ab./@-\\: x", max_size=20),
       st.sampled_from(["", ".service", ".socket", ".timer", ".target", ".mount", ".bogus", "."]))
def test_mangle_and_plain_names_are_fleetds(stem, suffix):
    arg = stem + suffix
    assert qu.mangle(arg) == mangle_unit_name(arg)
    name = qu.mangle(arg)
    assert qu.is_plain_name(name) == (is_valid_unit_name(name) and "@" not in name)
    assert qu.is_plain_name(arg) == (is_valid_unit_name(arg) and "@" not in arg)


@settings(max_examples=examples(200), deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                    max_leaves=8))
def test_go_json_is_fleetds(value):
    assert qu.go_json(value) == go_json(value)


def test_options_from_the_registry_group_as_from_options():
    wire = [{"section": "Service", "name": "ExecStart", "value": "/bin/true"}, {"section": "Unit", "name": "A"},
            {"section": "Service", "name": "B", "value": "x"}]
    unit = UnitFile.from_options([(o["section"], o["name"], o.get("value", "")) for o in wire])
    options = qu.options_from_wire({"options": wire})
    assert options == [(o.section, o.name, o.value) for o in unit.options]
    assert qu.unit_hash(options) == unit.hash
    assert qu.options_from_wire({"options": [{"section": "S", "name": 1}]}) is None
    assert qu.options_from_wire({"options": [{"section": "S", "name": "n", "extra": "?"}]}) is None


def test_poll_delays_are_the_clients():
    assert list(itertools.islice(fu.poll_delays(), 40)) == list(itertools.islice(poll_delays(0.25, fast_start=True), 40))


@pytest.mark.parametrize("args, parsed", [
    (["start", "a.service"], ("start", ["a.service"], False, 0)),
    (["start", "--no-block", "a", "b"], ("start", ["a", "b"], True, 0)),
    (["load", "a", "--block-attempts", "7"], ("load", ["a"], False, 7)),
    (["start", "--block-attempts=-1", "a"], ("start", ["a"], False, -1)),
    (["destroy", "a", "-"], ("destroy", ["a", "-"], False, 0)),
    (["submit", "a"], ("submit", ["a"], False, 0)),
    (["start"], None), (["start", "--replace", "a"], None), (["start", "--sign", "a"], None),
    (["start", "-h", "a"], None), (["start", "--", "a"], None), (["start", "--block-attempts=x", "a"], None),
    (["start", "--block-attempts"], None), (["start", "--no-block=1", "a"], None), (["submit", "--replace", "a"], None),
    (["stop", "--no-block", "a"], ("stop", ["a"], True, 0)), (["unload", "a"], None), (["star", "a"], None),
])
def test_command_lines(args, parsed):
    assert fu.parse_command(args) == parsed


def test_unit_commands_need_the_api_driver_over_plain_http_or_a_unix_socket():
    for argv in (["--driver=etcd", "start", "a"], ["--endpoint=https://h:1", "start", "a"], ["--debug", "start", "a"],
                 ["--endpoint=h:2379", "start", "a"], ["--tunnel=b", "start", "a"]):
        assert fu.run_unit_command(argv, {}) is None
    assert fu.run_unit_command(["start", "a"], {"FLEETCTL_START_NO_BLOCK": "1"}) is None


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.text(alphabet="ab.@:%/ é", min_size=1, max_size=80), max_size=60), st.integers(20, 400))
def test_name_chunks_keep_every_name_in_order_within_the_limit(names, limit):
    from urllib.parse import quote

    from fleetctl.fast_http import name_chunks

    chunks = name_chunks(names, limit)
    assert [n for chunk in chunks for n in chunk] == names and all(chunks)
    for chunk in chunks:
        cost = sum(len(quote(n, safe="")) + len("&unitName=") for n in chunk)
        assert cost <= limit or len(chunk) == 1
