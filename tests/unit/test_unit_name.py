"""fleetd.unit.name: fleet's unit-name rules, UnitNameInfo split, fleetctl mangling."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from fleetd.errors import InvalidUnitName
from fleetd.unit import UnitName, mangle_unit_name, parse_unit_arg, parse_unit_name
from fleetd.unit.name import go_path_base, is_valid_unit_name


# fleet unit/unit_test.go TestNamedUnit: (full, name-without-suffix, prefix, template, instance,
# is_instance, is_template)
@pytest.mark.parametrize("full, base, prefix, template, instance, is_inst, is_tmpl", [
    ("foo.service", "foo", "foo", None, None, False, False),
    ("foo@.service", "foo@", "foo", "foo@.service", "", False, True),
    ("foo@bar.service", "foo@bar", "foo", "foo@.service", "bar", True, False),
    ("foo@bar@baz.service", "foo@bar@baz", "foo", "foo@.service", "bar@baz", True, False),
    ("foo.1@.service", "foo.1@", "foo.1", "foo.1@.service", "", False, True),
    ("foo.1@2.service", "foo.1@2", "foo.1", "foo.1@.service", "2", True, False),
    ("ssh@.socket", "ssh@", "ssh", "ssh@.socket", "", False, True),
    ("ssh@1.socket", "ssh@1", "ssh", "ssh@.socket", "1", True, False),
    ("web-discovery@3.service", "web-discovery@3", "web-discovery", "web-discovery@.service", "3",
     True, False),
    ("dev-disk-by\\x2duuid.device", "dev-disk-by\\x2duuid", "dev-disk-by\\x2duuid", None, None,
     False, False),
    ("a:b_c.d-e.mount", "a:b_c.d-e", "a:b_c.d-e", None, None, False, False),
])
def test_valid_names_split_like_fleet(full, base, prefix, template, instance, is_inst, is_tmpl):
    un = parse_unit_name(full)
    assert un == UnitName(full=full, prefix=prefix, instance=instance, suffix=full.rsplit(".", 1)[1])
    assert un.name == base
    assert un.template == template
    assert un.is_instance is is_inst
    assert un.is_template is is_tmpl
    assert str(un) == full


@pytest.mark.parametrize("suffix", ["automount", "busname", "device", "mount", "path", "scope",
                                    "service", "slice", "snapshot", "socket", "swap", "target",
                                    "timer"])
def test_every_valid_suffix(suffix):
    assert parse_unit_name(f"x.{suffix}").suffix == suffix


@pytest.mark.parametrize("name, message", [
    ("", 'invalid unit name "": name is empty'),
    ("a b.service", "invalid unit name \"a b.service\": character ' ' not allowed"),
    ("../x.service", "invalid unit name \"../x.service\": character '/' not allowed"),
    ("foo\n.service", "invalid unit name \"foo\\n.service\": character '\\n' not allowed"),
    ("caf\u00e9.service", "invalid unit name \"caf\\u00e9.service\": character '\u00e9' not allowed"),
    ("@foo.service", 'invalid unit name "@foo.service": must not start with "@"'),
    ("@.service", 'invalid unit name "@.service": must not start with "@"'),
    ("foo", 'invalid unit name "foo": must contain a "." followed by a unit type'),
    ("foo.", 'invalid unit name "foo.": must not end with "."'),
    ("foo.link", 'invalid unit name "foo.link": unknown unit type "link"'),
    ("foo.Service", 'invalid unit name "foo.Service": unknown unit type "Service"'),
    (".service", 'invalid unit name ".service": empty name before ".service"'),
    ("foo@bar.mount", 'invalid unit name "foo@bar.mount": a "mount" unit cannot be a template or an instance'),
    ("foo@.slice", 'invalid unit name "foo@.slice": a "slice" unit cannot be a template or an instance'),
    ("a" * 249 + ".service", f'invalid unit name "{"a" * 249}.service": longer than 256 characters'),
])
def test_invalid_names(name, message):
    with pytest.raises(InvalidUnitName) as info:
        parse_unit_name(name)
    assert str(info.value) == message
    assert not is_valid_unit_name(name)


def test_length_limit_boundary():
    assert parse_unit_name("a" * 248 + ".service").full == "a" * 248 + ".service"  # 256 chars


@pytest.mark.parametrize("suffix", ["path", "service", "socket", "target", "timer"])
def test_template_types(suffix):
    assert parse_unit_name(f"t@.{suffix}").is_template
    assert parse_unit_name(f"t@i.{suffix}").is_instance


def test_instantiate():
    assert parse_unit_name("web@.service").instantiate("3").full == "web@3.service"
    assert parse_unit_name("web@1.service").instantiate("2").full == "web@2.service"
    with pytest.raises(InvalidUnitName):
        parse_unit_name("web.service").instantiate("2")


@pytest.mark.parametrize("arg, mangled", [
    ("foo", "foo.service"),
    ("foo.service", "foo.service"),
    ("units/foo.service", "foo.service"),
    ("../x.service", "x.service"),
    ("/abs/path/web@.service", "web@.service"),
    ("dir/", "dir.service"),
    ("foo.socket", "foo.socket"),
    ("foo.timer", "foo.timer"),
    ("foo.path", "foo.path"),
    ("foo.device", "foo.device"),
    ("foo.mount", "foo.mount"),
    ("foo.automount", "foo.automount"),
    ("foo.target", "foo.target.service"),   # fleetctl's RecognizedUnitType quirk
    ("foo.swap", "foo.swap.service"),
    ("foo.link", "foo.link.service"),
    ("hello@1", "hello@1.service"),
])
def test_mangle_like_fleetctl(arg, mangled):
    assert mangle_unit_name(arg) == mangled


def test_parse_unit_arg_validates_after_mangling():
    assert parse_unit_arg("../x.service").full == "x.service"
    assert parse_unit_arg("units/web@.service").is_template
    with pytest.raises(InvalidUnitName, match="character ' ' not allowed"):
        parse_unit_arg("dir/a b")


@pytest.mark.parametrize("path, base", [
    ("", "."), ("/", "/"), ("///", "/"), ("a/b", "b"), ("a/b/", "b"), ("a", "a"), ("/a//", "a"),
])
def test_go_path_base(path, base):
    assert go_path_base(path) == base


@settings(deadline=None)
@given(st.text(max_size=300))
def test_parse_unit_name_never_raises_anything_else(name):
    try:
        un = parse_unit_name(name)
    except InvalidUnitName as exc:
        assert "\n" not in str(exc)
        return
    assert un.full == name
    rebuilt = un.prefix + ("" if un.instance is None else "@" + un.instance) + "." + un.suffix
    assert rebuilt == name
