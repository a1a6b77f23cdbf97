"""fleetd.unit.requirements: [X-Fleet] options as fleet's job/job.go reads them."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from _depth import examples
from fleetd.errors import InvalidUnitOptions
from fleetd.unit import (
    MetadataConstraint as MC,
    Requirements,
    UnitFile,
    expand_specifiers,
    glob_match,
    is_valid_glob,
    parse_size,
    requirements_of,
    split_multivalue,
    validate_unit,
)

UNITS_DIR = Path(__file__).resolve().parents[2] / "units"


def req(text: str, name: str = "echo.service") -> Requirements:
    return requirements_of(UnitFile.parse(text), name)


def fleet(body: str) -> str:
    return "[X-Fleet]\n" + body


# --- basic options (fleet job_test.go cases) --------------------------------------------

def test_no_requirements():
    assert req("") == Requirements()
    assert req("[X-Fleet]\n") == Requirements()
    assert req("[Unit]\nDescription=Timmy\n") == Requirements()


@pytest.mark.parametrize("body, machine_id", [
    ("MachineID=123", "123"),
    ('MachineID="123" "456"', "123"),                     # first value wins
    ('X-ConditionMachineID="123" "456"', "123"),
    ('X-ConditionMachineID="456"\nMachineID="123"', "123"),  # modern key has precedence
    ('MachineID="123"\nX-ConditionMachineID="456"', "123"),
    ("X-ConditionMachineBootID=123", "123"),
    ("X-ConditionMachineBootID=123\nX-ConditionMachineID=456", "456"),
    ("X-ConditionMachineBootID=123\nMachineID=456", "456"),
])
def test_machine_id(body, machine_id):
    assert req(fleet(body)).machine_id == machine_id


def test_peers_conflicts_replaces_multivalues_and_legacy_keys():
    r = req(fleet(
        'MachineOf="foo.service" "bar.service"\n'
        "X-ConditionMachineOf=old.service\n"
        "Conflicts=a*.service b*.service\n"
        "Conflicts=c*.service\n"
        "X-Conflicts=legacy*.service\n"
        "Replaces=r.service\n"
        "Replaces=r.service\n"
    ))
    assert r.machine_of == ("old.service", "foo.service", "bar.service")
    assert r.conflicts == ("legacy*.service", "a*.service", "b*.service", "c*.service")
    assert r.replaces == ("r.service",)
    assert r.unknown_options == ()


@pytest.mark.parametrize("body, expected", [
    ("MachineMetadata=foo=bar", [MC("foo", "=", "bar")]),
    ('MachineMetadata="foo=bar" "foo=baz"', [MC("foo", "=", "bar"), MC("foo", "=", "baz")]),
    ("MachineMetadata=foo=bar\nMachineMetadata=foo=baz\nMachineMetadata=foo=asdf",
     [MC("foo", "=", "bar"), MC("foo", "=", "baz"), MC("foo", "=", "asdf")]),
    ('MachineMetadata="foo=bar" "duck=quack"', [MC("foo", "=", "bar"), MC("duck", "=", "quack")]),
    ("X-ConditionMachineMetadata=foo=bar", [MC("foo", "=", "bar")]),
    ("MachineMetadata=foo=bar\nX-ConditionMachineMetadata=foo=asdf",
     [MC("foo", "=", "asdf"), MC("foo", "=", "bar")]),
    # bad fields are ignored, as in fleet
    ("MachineMetadata=foo=", []),
    ("MachineMetadata==asdf", []),
    ("MachineMetadata=foo=asdf=WHAT", []),
    ("MachineMetadata=novalue", []),
    ('MachineMetadata=ignored=\nMachineMetadata=oh=yeah\nMachineMetadata=whynot=zoidberg\n'
     'X-ConditionMachineMetadata=oh=no\nX-ConditionMachineMetadata="one=abc" "two=def"',
     [MC("oh", "=", "no"), MC("one", "=", "abc"), MC("two", "=", "def"),
      MC("oh", "=", "yeah"), MC("whynot", "=", "zoidberg")]),
    # our operators
    ('MachineMetadata="disk!=hdd" "cores>=4" "mem>2" "load<1.5" "load<=2"',
     [MC("disk", "!=", "hdd"), MC("cores", ">=", "4"), MC("mem", ">", "2"),
      MC("load", "<", "1.5"), MC("load", "<=", "2")]),
    ('MachineMetadata="region=us east"', [MC("region", "=", "us east")]),
])
def test_machine_metadata(body, expected):
    assert list(req(fleet(body)).metadata) == expected


@pytest.mark.parametrize("body, is_global", [
    ("", False),
    ("MachineOf=bar", False),
    ("MachineOf=bar\nGlobal=false", False),
    ("MachineOf=bar\nGlobal=what", False),
    ("X-Global=true", False),
    ("X-ConditionGlobal=true", False),
    ("Global=true", True),
    ("Global=True", True),
    ("Global=YES", True),
    ("Global=1", True),
    ("Global=on", True),
    ("Global=t", True),
    ("Global=true\nGlobal=false", False),   # the last value wins
    ("Global=false\nGlobal=true", True),
])
def test_global_truthiness(body, is_global):
    assert req(fleet(body)).is_global is is_global


def test_global_in_wrong_section_is_ignored():
    assert req("[Service]\nGlobal=true\n").is_global is False


def test_unknown_options_are_reported_not_fatal():
    r = req(fleet("Foo=bar\nX-Foo=1\nglobal=true\nMachineId=x\nFoo=baz\nMachineOf=a.service\n"))
    assert r.unknown_options == ("Foo", "X-Foo", "global", "MachineId")
    assert r.machine_of == ("a.service",)
    assert validate_unit(UnitFile.parse(fleet("Foo=bar\n")), "x.service").unknown_options == ("Foo",)


# --- specifiers -------------------------------------------------------------------------

SPEC = fleet("MachineOf=%n\nConflicts=%N\nReplaces=%p\nMachineID=%i\nMachineMetadata=host=%i%%\n")


def test_specifiers_for_plain_unit():
    r = req(SPEC, "test.service")
    assert (r.machine_of, r.conflicts, r.replaces, r.machine_id) == (
        ("test.service",), ("test",), ("test",), "")  # as fleet: pinned to no machine at all
    assert r.metadata == (MC("host", "=", "%"),)


def test_specifiers_for_instance_unit():
    r = req(SPEC, "ssh@2.service")
    assert (r.machine_of, r.conflicts, r.replaces, r.machine_id) == (
        ("ssh@2.service",), ("ssh@2",), ("ssh",), "2")
    assert r.metadata == (MC("host", "=", "2%"),)


@pytest.mark.parametrize("value, expected", [
    ("%n", "foo@bar.waldo"), ("%N", "foo@bar"), ("%p", "foo"), ("%i", "bar"),
    ("%%i", "%i"), ("%H", "%H"), ("100%", "100%"), ("a%i-%p", "abar-foo"),
])
def test_expand_specifiers(value, expected):
    assert expand_specifiers(value, "foo@bar.waldo") == expected


def test_specifiers_only_in_xfleet():
    unit = UnitFile.parse("[Unit]\nDescription=%i\n[X-Fleet]\nMachineOf=web@%i.service\n")
    assert requirements_of(unit, "web-discovery@7.service").machine_of == ("web@7.service",)
    assert unit.values("Unit", "Description") == ["%i"]


def test_example_units():
    web = UnitFile.parse((UNITS_DIR / "web@.service").read_text())
    assert requirements_of(web, "web@1.service").conflicts == ("web@*.service",)
    side = UnitFile.parse((UNITS_DIR / "web-discovery@.service").read_text())
    assert validate_unit(side, "web-discovery@3.service").machine_of == ("web@3.service",)
    mon = UnitFile.parse((UNITS_DIR / "global-monitor.service").read_text())
    assert validate_unit(mon, "global-monitor.service").is_global
    hello = UnitFile.parse((UNITS_DIR / "hello.service").read_text())
    assert validate_unit(hello, "hello.service") == Requirements()


# --- resources --------------------------------------------------------------------------

@pytest.mark.parametrize("text, cpu, memory", [
    ("[Service]\nCPUQuota=150%\n", 1.5, 0),
    ("[Service]\nCPUQuota=20%\nCPUQuota=200%\n", 2.0, 0),
    ("[Service]\nCPUQuota=200%\nCPUQuota=\n", 0.0, 0),          # empty assignment resets
    ("[Service]\nCPUQuota=lots\n", 0.0, 0),
    ("[Service]\nMemoryMax=512M\n", 0.0, 512 * 1024 ** 2),
    ("[Service]\nMemoryLimit=1G\n", 0.0, 1024 ** 3),
    ("[Service]\nMemoryLimit=1G\nMemoryMax=2K\n", 0.0, 2048),   # MemoryMax preferred
    ("[Service]\nMemoryMax=infinity\nMemoryLimit=1G\n", 0.0, 0),
    ("[Service]\nMemoryMax=1.5T\n", 0.0, int(1.5 * 1024 ** 4)),
    ("[Service]\nMemoryMax=4096\n", 0.0, 4096),
    ("[Unit]\nMemoryMax=1G\n", 0.0, 0),                         # wrong section
    ("[Service]\nCPUQuota=150%\nMemoryMax=1G\n[X-Fleet]\nReserveCPU=0.25\nReserveMemory=256M\n",
     0.25, 256 * 1024 ** 2),
    ("[Service]\nCPUQuota=150%\n[X-Fleet]\nReserveCPU=abc\n", 1.5, 0),  # unreadable: ignored
    ("[X-Fleet]\nReserveCPU=1\nReserveCPU=3\nReserveMemory=100\n", 3.0, 100),
])
def test_resources(text, cpu, memory):
    r = req(text)
    assert (r.cpu, r.memory) == (cpu, memory)


@pytest.mark.parametrize("value, size", [
    ("0", 0), ("1", 1), ("1B", 1), ("1K", 1024), ("2M", 2 << 20), ("3G", 3 << 30), ("1T", 1 << 40),
    ("512m", 512 << 20), ("infinity", 0), ("", None), ("-1M", None), ("1X", None), ("M", None),
])
def test_parse_size(value, size):
    assert parse_size(value) == size


# --- validation -------------------------------------------------------------------------

@pytest.mark.parametrize("body, message", [
    ("MachineID=abc\nMachineOf=b.service", "unit foo.service: MachineID cannot be combined with MachineOf"),
    ("MachineID=abc\nConflicts=b*", "unit foo.service: MachineID cannot be combined with Conflicts"),
    ("MachineID=abc\nGlobal=true", "unit foo.service: MachineID cannot be combined with Global"),
    ("MachineID=abc\nReplaces=b.service", "unit foo.service: MachineID cannot be combined with Replaces"),
    ("X-ConditionMachineBootID=abc\nX-Conflicts=b*", "unit foo.service: MachineID cannot be combined with Conflicts"),
    ("Global=yes\nMachineOf=b.service", "unit foo.service: Global cannot be combined with MachineOf"),
    ("Global=yes\nReplaces=b.service", "unit foo.service: Global cannot be combined with Replaces"),
    ("Conflicts=a*\nReplaces=b.service", "unit foo.service: Conflicts cannot be combined with Replaces"),
    ("MachineOf=bar.service\nConflicts=ba*",
     "unit foo.service: unresolvable requirements: MachineOf peer 'bar.service' matches Conflicts 'ba*'"),
    ("MachineOf=%p-side.service\nReplaces=foo-*",
     "unit foo.service: unresolvable requirements: MachineOf peer 'foo-side.service' matches Replaces 'foo-*'"),
    ("ReserveCPU=two", "unit foo.service: ReserveCPU='two' is not a non-negative number of cores"),
    ("ReserveCPU=-1", "unit foo.service: ReserveCPU='-1' is not a non-negative number of cores"),
    ("ReserveMemory=lots",
     "unit foo.service: ReserveMemory='lots' is not a size in bytes (e.g. 1073741824, 512M, 2G)"),
    ("MachineMetadata=disk>=abc", "unit foo.service: MachineMetadata disk>='abc': operator '>=' needs a number"),
    ('MachineMetadata="ram=big" "cores<x"', "unit foo.service: MachineMetadata cores<'x': operator '<' needs a number"),
])
def test_validate_rejects(body, message):
    with pytest.raises(InvalidUnitOptions) as info:
        validate_unit(UnitFile.parse(fleet(body)), "foo.service")
    assert str(info.value) == message


@pytest.mark.parametrize("body", [
    "MachineID=abc",
    "Global=true\nConflicts=other*.service",          # fleet allows Global with Conflicts
    "Global=false\nMachineOf=a.service\nReplaces=b.service",
    "MachineOf=a.service\nConflicts=b*",
    "MachineMetadata=disk=ssd\nMachineMetadata=cores>=4\nMachineMetadata=disk!=hdd",
    "MachineMetadata=disk>=abc=x",                     # ignored term, as fleet ignores it
    "ReserveCPU=1.5\nReserveMemory=1G",
    "Conflicts=[",                                     # bad glob: matches nothing (fleet)
])
def test_validate_accepts(body):
    unit = UnitFile.parse(fleet(body))
    assert validate_unit(unit, "foo.service") == requirements_of(unit, "foo.service")


def test_requirements_are_cached_and_hashable():
    unit = UnitFile.parse(fleet("MachineOf=a.service\n"))
    first = requirements_of(unit, "x.service")
    assert requirements_of(UnitFile.parse(fleet("MachineOf=a.service\n")), "x.service") is first
    assert hash(first) == hash(Requirements(machine_of=("a.service",)))


# --- multivalue splitting -----------------------------------------------------------------

@pytest.mark.parametrize("line, words", [
    ('"bar" "ping" "pong"', ["bar", "ping", "pong"]),
    ('"bar"', ["bar"]),
    ("", []),
    ('""', []),
    ("a  b\tc", ["a", "b", "c"]),
    ('"a b" c', ["a b", "c"]),
    ('x"y z"', ["xy z"]),
    ('"unterminated x', ["unterminated x"]),
])
def test_split_multivalue(line, words):
    assert split_multivalue(line) == words


# --- Go path.Match ------------------------------------------------------------------------

@pytest.mark.parametrize("pattern, name, matched", [
    # from Go's path/match_test.go
    ("abc", "abc", True), ("*", "abc", True), ("*c", "abc", True), ("a*", "a", True),
    ("a*", "abc", True), ("a*", "ab/c", False), ("a*/b", "abc/b", True), ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True), ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False), ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True), ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[c]", "abc", True), ("ab[b-d]", "abc", True), ("ab[e-g]", "abc", False),
    ("ab[^c]", "abc", False), ("ab[^b-d]", "abc", False), ("ab[^e-g]", "abc", True),
    ("a\\*b", "a*b", True), ("a\\*b", "ab", False), ("a?b", "a☺b", True), ("a[^a]b", "a☺b", True),
    ("a???b", "a☺b", False), ("a[^a][^a][^a]b", "a☺b", False), ("[a-ζ]*", "α", True),
    ("*[a-ζ]", "A", False), ("a?b", "a/b", False), ("a*b", "a/b", False),
    ("[\\]a]", "]", True), ("[\\-]", "-", True), ("[x\\-]", "x", True), ("[x\\-]", "-", True),
    ("[x\\-]", "z", False), ("[\\-x]", "x", True), ("[\\-x]", "-", True), ("[\\-x]", "a", False),
    # malformed patterns never match (fleet ignores path.Match's error)
    ("[]a]", "]", False), ("[-]", "-", False), ("[x-]", "x", False), ("[x-]", "-", False),
    ("[x-]", "z", False), ("[-x]", "x", False), ("[-x]", "-", False), ("[-x]", "a", False),
    ("\\", "a", False), ("[a-b-c]", "a", False), ("[", "a", False), ("[^", "a", False),
    ("[^bc", "a", False), ("a[", "a", False), ("a[", "ab", False), ("a[", "x", False),
    ("a/b[", "x", False), ("*x", "xxx", True),
    # the glob forms fleet units use
    ("web@*.service", "web@1.service", True), ("web@*.service", "web.service", False),
    ("*.service", "foo.service", True), ("apache@*.service", "apache-discovery@1.service", False),
    # where fnmatch differs: "!" is not a negation, and "*" does not cross "/"
    ("[!a]x", "bx", False), ("[!a]x", "!x", True), ("*", "a/b", False),
])
def test_glob_match_is_go_path_match(pattern, name, matched):
    assert glob_match(pattern, name) is matched


def test_fnmatch_would_have_been_wrong():
    assert fnmatch.fnmatchcase("bx", "[!a]x") and not glob_match("[!a]x", "bx")
    assert fnmatch.fnmatchcase("a/b", "*") and not glob_match("*", "a/b")


@pytest.mark.parametrize("pattern, valid", [
    ("web@*.service", True), ("[a-z]*", True), ("a\\*", True), ("[", False), ("a[", False),
    ("[]a]", False), ("\\", False), ("*[x-]", False), ("", True),
])
def test_is_valid_glob(pattern, valid):
    assert is_valid_glob(pattern) is valid


simple = st.text(alphabet="ab/.-@", max_size=10)


@settings(deadline=None)
@given(st.text(alphabet="ab.-@", max_size=8), simple)
def test_glob_without_metacharacters_is_equality(pattern, name):
    assert glob_match(pattern, name) is (pattern == name)


@settings(deadline=None)
@given(st.text(alphabet="ab*?.@", max_size=8), st.text(alphabet="ab.@", max_size=10))
def test_glob_agrees_with_regex_translation_on_slashless_names(pattern, name):
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    assert glob_match(pattern, name) is (re.fullmatch(regex, name, re.DOTALL) is not None)


xfleet_text = st.text(alphabet=st.sampled_from(list('="% \n\t\\abAB*<>!:@.-0123456789')), max_size=80)
xfleet_keys = st.sampled_from(["MachineID", "MachineOf", "MachineMetadata", "Conflicts", "Global",
                               "Replaces", "ReserveCPU", "ReserveMemory", "X-Conflicts", "Other"])


@settings(deadline=None, max_examples=examples(500))
@given(st.lists(st.tuples(xfleet_keys, xfleet_text), max_size=6),
       st.sampled_from(["a.service", "a@.service", "a@b.service", "noname", "%i@%p.service"]))
def test_requirements_never_raise_and_validate_raises_only_invalid_options(lines, name):
    text = "[X-Fleet]\n" + "".join(f"{k}={v.replace(chr(10), ' ')}\n" for k, v in lines)
    try:
        unit = UnitFile.parse(text)
    except Exception as exc:  # noqa: BLE001 - only the parser's own error is acceptable
        assert type(exc).__name__ == "UnitFileError"
        return
    r = requirements_of(unit, name)
    assert isinstance(r, Requirements) and r.cpu >= 0 and r.memory >= 0
    try:
        assert validate_unit(unit, name) == r
    except InvalidUnitOptions as exc:
        assert str(exc).startswith(f"unit {name}: ") and "\n" not in str(exc)
