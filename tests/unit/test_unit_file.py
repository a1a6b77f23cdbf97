"""fleetd.unit.file: go-systemd compatible parsing, canonical serialization, fleet hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from _depth import examples
from fleetd.errors import UnitFileError
from fleetd.unit import UnitFile, UnitOption

UNITS_DIR = Path(__file__).resolve().parents[2] / "units"

O = UnitOption

HELLO = (
    "[Unit]\n"
    "Description=Hello World\n"
    "\n"
    "[Service]\n"
    'ExecStart=/bin/sh -c "while true; do echo Hello World; sleep 1; done"\n'
)


# --- exact parses -----------------------------------------------------------------------

def test_hello_service_options_serialization_and_hash():
    unit = UnitFile.parse(HELLO, source="hello.service")
    assert unit.options == (
        O("Unit", "Description", "Hello World"),
        O("Service", "ExecStart", '/bin/sh -c "while true; do echo Hello World; sleep 1; done"'),
    )
    assert unit.serialize() == HELLO
    # the hash is SHA1 over exactly this canonical text, computed here independently
    assert unit.hash == hashlib.sha1(HELLO.encode()).hexdigest()
    assert unit.hash == "265799fbbc9d624041ef38c5e3ef78c52ffb4cc3"
    assert unit.sections() == ("Unit", "Service")
    assert unit.description == "Hello World"


def test_hash_matches_fleets_own_test_vector():
    # fleet unit/unit_test.go TestUnitHash
    unit = UnitFile.parse("[Service]\nExecStart=/bin/sleep 100\n")
    assert unit.hash == "1c6fb6f3684bafb0c173d8b8b957ceff031180c1"


def test_example_units_on_disk():
    hello = UnitFile.parse((UNITS_DIR / "hello.service").read_bytes(), source="hello.service")
    assert hello.serialize() == HELLO
    web = UnitFile.parse((UNITS_DIR / "web@.service").read_text(), source="web@.service")
    assert web.values("X-Fleet", "Conflicts") == ["web@*.service"]
    side = UnitFile.parse((UNITS_DIR / "web-discovery@.service").read_text())
    assert side.values("X-Fleet", "MachineOf") == ["web@%i.service"]
    assert side.values("Unit", "BindsTo") == ["web@%i.service"]
    glob = UnitFile.parse((UNITS_DIR / "global-monitor.service").read_text())
    assert glob.values("X-Fleet", "Global") == ["true"]


SIDEKICK = r"""[Unit]
Description=Announce Apache1
# Requirements
BindsTo=apache@%i.service
After=apache@%i.service

[Service]
ExecStart=/bin/sh -c "while true; do etcdctl set /services/website/apache@%i '{ \"host\": \"%H\", \"port\": 80, \"version\": \"52c7248a14\" }' --ttl 60;sleep 45;done"
ExecStop=/usr/bin/etcdctl rm /services/website/apache@%i

[X-Fleet]
MachineOf=apache@%i.service
"""


def test_sidekick_with_quoted_execstart_is_kept_verbatim():
    unit = UnitFile.parse(SIDEKICK, source="apache-discovery@.service")
    assert unit.options == (
        O("Unit", "Description", "Announce Apache1"),
        O("Unit", "BindsTo", "apache@%i.service"),
        O("Unit", "After", "apache@%i.service"),
        O("Service", "ExecStart",
          r"""/bin/sh -c "while true; do etcdctl set /services/website/apache@%i '{ \"host\": \"%H\", \"port\": 80, \"version\": \"52c7248a14\" }' --ttl 60;sleep 45;done" """.rstrip()),
        O("Service", "ExecStop", "/usr/bin/etcdctl rm /services/website/apache@%i"),
        O("X-Fleet", "MachineOf", "apache@%i.service"),
    )
    # the comment line disappears from the canonical form, nothing else changes
    assert unit.serialize() == SIDEKICK.replace("# Requirements\n", "")


def test_comments_blank_lines_and_whitespace_around_equals():
    text = (
        "; leading comment\n"
        "\n"
        "   [Unit]   \n"
        ";ignore this guy\n"
        "Description = Foo\n"
        "\t# indented comment\n"
        "\n"
        "[Service]\n"
        'ExecStart=echo "ping";\n'
        'ExecStop=echo "pong"\n'
        "# ignore me, too\n"
        "ExecStop=echo post\n"
        "  Environment =  A=1 B=2   \n"
        "[X-Fleet]\n"
        "MachineMetadata=foo=bar\n"
        "MachineMetadata=baz=qux\n"
    )
    unit = UnitFile.parse(text)
    assert unit.options == (
        O("Unit", "Description", "Foo"),
        O("Service", "ExecStart", 'echo "ping";'),
        O("Service", "ExecStop", 'echo "pong"'),
        O("Service", "ExecStop", "echo post"),
        O("Service", "Environment", "A=1 B=2"),
        O("X-Fleet", "MachineMetadata", "foo=bar"),
        O("X-Fleet", "MachineMetadata", "baz=qux"),
    )
    assert unit.serialize() == (
        "[Unit]\nDescription=Foo\n\n"
        '[Service]\nExecStart=echo "ping";\nExecStop=echo "pong"\nExecStop=echo post\n'
        "Environment=A=1 B=2\n\n"
        "[X-Fleet]\nMachineMetadata=foo=bar\nMachineMetadata=baz=qux\n"
    )
    assert unit.values("Service", "ExecStop") == ['echo "pong"', "echo post"]
    assert unit.values("Service", "Nope") == []
    assert unit.value("Service", "ExecStop") == "echo post"


def test_continuation_lines_are_passed_through_like_go_systemd():
    # fleet unit/unit_test.go TestDeserializeEscapedMultilines
    text = (
        "\n[Service]\n"
        "ExecStart=echo \\\n  \"pi\\\n  ng\"\n"
        "ExecStop=\\\necho \"po\\\nng\"\n"
        "# comments within continuation should not be ignored\n"
        "ExecStopPre=echo\\\n#pang\n"
        "ExecStopPost=echo\\\n#peng\\\npung\n"
    )
    unit = UnitFile.parse(text)
    assert unit.values("Service", "ExecStart") == ['echo \\\n  "pi\\\n  ng"']
    assert unit.values("Service", "ExecStop") == ['\\\necho "po\\\nng"']
    assert unit.values("Service", "ExecStopPre") == ["echo\\\n#pang"]
    assert unit.values("Service", "ExecStopPost") == ["echo\\\n#peng\\\npung"]
    assert "ExecStart=echo \\\n  \"pi\\\n  ng\"\n" in unit.serialize()


def test_continuation_ended_by_blank_line_keeps_its_newline():
    unit = UnitFile.parse("[S]\nA=x \\\n\nB=y\n")
    assert unit.options == (O("S", "A", "x \\\n"), O("S", "B", "y"))
    assert unit.serialize() == "[S]\nA=x \\\n\nB=y\n"
    # a continuation at end of file is treated as if the file ended with a newline
    assert UnitFile.parse("[S]\nA=x \\").options == (O("S", "A", "x \\\n"),)


def test_comment_continuation_swallows_next_line():
    unit = UnitFile.parse("[S]\n# comment \\\nA=hidden\nB=shown\n")
    assert unit.options == (O("S", "B", "shown"),)


def test_empty_values_and_repeated_keys():
    text = (
        "[Service]\n"
        "ExecStartPre=-/bin/sh -c 'echo one'\n"
        "ExecStartPre=\n"
        "ExecStartPre=/bin/sh -c 'echo two'\n"
        "ExecStartPre=/bin/sh -c 'echo three'\n"
        "Environment=   \n"
        "ExecStart=/bin/sleep 1000\n"
    )
    unit = UnitFile.parse(text)
    assert unit.values("Service", "ExecStartPre") == [
        "-/bin/sh -c 'echo one'", "", "/bin/sh -c 'echo two'", "/bin/sh -c 'echo three'"]
    assert unit.values("Service", "Environment") == [""]
    assert unit.serialize() == text.replace("Environment=   \n", "Environment=\n")


def test_repeated_sections_are_grouped_in_first_seen_order():
    unit = UnitFile.parse("[A]\na=1\n[B]\nb=1\n[A]\na=2\n[C]\n[B]\nb=2\n")
    assert unit.options == (O("A", "a", "1"), O("A", "a", "2"), O("B", "b", "1"), O("B", "b", "2"))
    assert unit.serialize() == "[A]\na=1\na=2\n\n[B]\nb=1\nb=2\n"
    assert unit.sections() == ("A", "B")  # [C] has no options, like go-systemd


def test_crlf_bom_and_odd_names():
    unit = UnitFile.parse(b"\xef\xbb\xbf[Unit]\r\nDescription=Hi there\r\n<<<=bar\r\n")
    assert unit.options == (O("Unit", "Description", "Hi there"), O("Unit", "<<<", "bar"))


def test_empty_file_and_sections_only():
    assert UnitFile.parse("").options == ()
    assert UnitFile.parse("# nothing\n\n[Unit]\n").serialize() == ""
    assert UnitFile.parse("").hash == hashlib.sha1(b"").hexdigest()


def test_from_options_groups_and_validates():
    unit = UnitFile.from_options([("Service", "ExecStart", "/bin/true"), ("Unit", "Description", "x"),
                                  O("Service", "Restart", "always")])
    assert unit.serialize() == "[Service]\nExecStart=/bin/true\nRestart=always\n\n[Unit]\nDescription=x\n"
    assert unit == UnitFile.parse(unit.serialize())
    with pytest.raises(UnitFileError, match=r'^api: option \[Service\] "ExecStart"="a\\nb" cannot be represented'):
        UnitFile.from_options([("Service", "ExecStart", "a\nb")], source="api")
    with pytest.raises(UnitFileError, match="cannot be"):
        UnitFile.from_options([("Service", "Exec=Start", "x")])
    with pytest.raises(UnitFileError, match="cannot be"):
        UnitFile.from_options([("Service", " ExecStart", "x")])
    with pytest.raises(UnitFileError):
        UnitFile.from_options([("Serv]ice", "ExecStart", "x")])


# --- malformed input ----------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("Description=x\n[Unit]\n", 'bad.service: line 1: option outside of a section: "Description=x"'),
    ("# c\n>>>>>>\n[Service]\n", 'bad.service: line 2: option outside of a section: ">>>>>>"'),
    ("[Unit]\n\n[Service]\n<<<<<<<<\nA=b\n",
     'bad.service: line 4: unexpected newline encountered while parsing option name "<<<<<<<<"'),
    ("[Unit]\nnonsense upon stilts",
     'bad.service: line 2: unexpected end of file while parsing option name "nonsense upon stilts"'),
    ("[Unit]\nA=1\n[Service\nB=2\n", "bad.service: line 3: unable to find end of section"),
    ("[Unit] trailing\n", 'bad.service: line 1: found garbage after section name [Unit]: "trailing"'),
    ("[S]\nA=x\\ \nB=y\n",
     "bad.service: line 2: option A: value ends in a backslash followed by blanks or CR "
     "(a continuation must end the line)"),
    (b"[Unit]\nDescription=caf\xe9\n", "bad.service: line 2: invalid UTF-8 (byte 0xe9 at column 16)"),
    ("[Unit]\nDescription=\ud800\n",
     "bad.service: line 2: invalid UTF-8 (unencodable character U+D800 at column 13)"),
    ("[Unit]\n\nDescription=" + "x" * 2036 + "\n", "bad.service: line 3: line too long (max 2048 bytes)"),
    ("[Unit]\n#" + "x" * 3000 + "\n", "bad.service: line 2: line too long (max 2048 bytes)"),
])
def test_malformed_units_give_one_line_messages(text, message):
    with pytest.raises(UnitFileError) as info:
        UnitFile.parse(text, source="bad.service")
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_line_length_limit_boundary():
    # 2047 bytes of content is the longest line go-systemd accepts
    ok = "[Unit]\nDescription=" + "x" * (2047 - len("Description=")) + "\n"
    assert len(UnitFile.parse(ok).options[0].value) == 2047 - 12
    with pytest.raises(UnitFileError, match="line too long"):
        UnitFile.parse(ok.replace("x", "xx", 1))
    # the limit counts bytes, not characters
    with pytest.raises(UnitFileError, match="line too long"):
        UnitFile.parse("[Unit]\nDescription=" + "é" * 1020 + "\n")


# --- properties ---------------------------------------------------------------------------

# text biased toward the syntax's special characters
unit_chars = st.sampled_from(list("[]#;=\\\"% \t\r\nabcXYZ09\u00e9\u2028\x85\ufeff"))
unit_like_text = st.text(alphabet=unit_chars, max_size=120)
sectioned_text = unit_like_text.map(lambda s: "[Service]\n" + s)

names = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcxyz-_", min_size=1, max_size=12)
values = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\\"),  # no controls: see fleetd.unit.control
                 max_size=30).map(lambda v: v.strip(" \t\x0b\x0c\x85\xa0\u1680\u2000\u2001\u2002"
                                                    "\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
                                                    "\u200a\u2028\u2029\u202f\u205f\u3000"))
options = st.lists(st.tuples(st.sampled_from(["Unit", "Service", "X-Fleet", "Install"]), names, values),
                   max_size=8)


@settings(max_examples=examples(1500), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(unit_like_text, sectioned_text))
def test_serialize_parse_is_stable(text):
    try:
        unit = UnitFile.parse(text)
    except UnitFileError:
        return
    canonical = unit.serialize()
    again = UnitFile.parse(canonical)
    assert again == unit
    assert again.serialize() == canonical
    assert UnitFile.from_options(unit.options) == unit


@settings(max_examples=examples(500), deadline=None, suppress_health_check=list(HealthCheck))
@given(options, st.data())
def test_hash_depends_only_on_content(opts, data):
    unit = UnitFile.from_options(opts)
    # render the same content with comments, blank lines and blanks around "="
    lines = ["# generated", ""]
    current = None
    for opt in unit.options:
        section, name, value = opt.section, opt.name, opt.value
        if section != current:
            lines.append(data.draw(st.sampled_from(["", "; c", "  "])))
            lines.append(f"[{section}]" + data.draw(st.sampled_from(["", "  ", "\t"])))
            current = section
        pad_l = data.draw(st.sampled_from(["", " ", "\t "]))
        pad_r = data.draw(st.sampled_from(["", " ", "  "]))
        lines.append(f"{pad_l}{name}{pad_r}={pad_r}{value}{pad_l}")
        if data.draw(st.booleans()):
            lines.append("# between")
    text = "\n".join(lines) + data.draw(st.sampled_from(["", "\n", "\n\n"]))
    eol = data.draw(st.sampled_from(["\n", "\r\n"]))
    text = text.replace("\n", eol)
    reparsed = UnitFile.parse(text)
    assert reparsed == unit
    assert reparsed.hash == unit.hash == hashlib.sha1(unit.serialize().encode()).hexdigest()


@settings(max_examples=examples(1500), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200), unit_like_text,
                 unit_like_text.map(lambda s: s.encode("utf-8", "surrogatepass"))))
def test_arbitrary_input_only_ever_raises_unitfileerror(data):
    try:
        unit = UnitFile.parse(data, source="fuzz")
    except UnitFileError as exc:
        assert str(exc).startswith("fuzz: line ")
        assert "\n" not in str(exc)
        return
    assert isinstance(unit.hash, str) and len(unit.hash) == 40
