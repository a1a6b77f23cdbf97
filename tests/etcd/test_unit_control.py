"""Control characters systemd cannot read are refused by one rule (fleetd.unit.control) in the
unit-file parser, UnitFile.from_options (the API), fleetctl, the registry and the agent; the API
part runs against a real fleetd API server on a real etcd."""

from __future__ import annotations

import hashlib

import aetcd
import unicodedata

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st

from _depth import examples
from fleetctl.cli import cli
from fleetd.agent.systemd import _refuse_unreadable
from fleetd.errors import UnitFileError
from fleetd.model import Machine
from fleetd.unit.control import check_option, check_text, describe, find_control
from fleetd.unit.file import UnitFile

from _api_server import HELLO_OPTIONS, ApiHarness, ThreadedApiServer

MID = "c" * 32


def control_characters() -> list[str]:
    """Every character of Unicode's category Cc (a scan of all code points: computed by the test
    that uses it, not when the module is collected in every pytest-xdist worker)."""
    return [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Cc"]


# ---------------------------------------------------------------------------- the pure rule


@pytest.mark.parametrize("text, pos", [
    ("[Unit]\nDescription=x\n", None),
    ("[Unit]\r\nDescription=x\r\n", None),          # CRLF files
    ("[Unit]\r\nDescription=x\r", None),            # CR at the end of the file
    ("[Unit]\n\tDescription=x\ty\n", None),         # TAB
    ("[Service]\nExecStart=/bin/true\x00x\n", 29),  # the NUL of issue 17
    ("[Service]\nExecStart=a\rExecStartPre=/evil\n", 21),  # a bare CR ends a line for systemd
    ("[Unit]\nDescription=\x1b[31mred\n", 19),        # ESC: terminal escape
    ("[Unit]\nDescription=a\x7fb\n", 20),             # DEL
    ("[Unit]\nDescription=a\x9bb\n", 20),             # C1 CSI
    ("[Unit]\nDescription=a\x0bb\n", 20),             # VT
    ("# \x00 in a comment\n[Unit]\n", 2),            # anywhere in the file
])
def test_find_control_in_text(text, pos):
    assert find_control(text) == pos


@pytest.mark.parametrize("where, text, refused", [
    ("value", "a\\\nb", False),   # a continuation keeps its LF
    ("value", "a\tb", False),
    ("value", "a\rb", True),
    ("value", "a\x00", True),
    ("name", "Exec\nStart", True),
    ("name", "Exec\tStart", False),
    ("name", "\x1b", True),
])
def test_find_control_in_fields(where, text, refused):
    assert (find_control(text, where=where) is not None) == refused


def test_every_cc_but_tab_and_lf_is_refused():
    for ch in control_characters():
        assert (find_control(f"[Unit]\nDescription=a{ch}b\n") is not None) == (ch not in "\t\n"), describe(ch)
        assert (find_control(f"a{ch}b", where="value") is not None) == (ch not in "\t\n"), describe(ch)
        assert (find_control(f"a{ch}b", where="name") is not None) == (ch != "\t"), describe(ch)
    assert find_control("a\r\nb") is None  # CR as part of a CRLF line end


def test_messages_are_one_line_and_name_the_place():
    with pytest.raises(UnitFileError) as info:
        check_text("[Unit]\nDescription=ok\n[Service]\nExecStart=/bin/true\x00x\n", "hello.service")
    assert str(info.value) == ("hello.service: line 4: control character U+0000 (NUL) at column 20 "
                               "(systemd cannot read it)")
    with pytest.raises(UnitFileError) as info:
        check_option("Service", "ExecStart", "/bin/true\x00x", "unit a.service")
    assert str(info.value) == ("unit a.service: option [Service] ExecStart: control character U+0000 (NUL) "
                               "in the value (systemd cannot read it)")
    with pytest.raises(UnitFileError) as info:
        check_option("Serv\x1bice", "A", "b", "api")
    assert "\n" not in str(info.value) and "\\x1b" in str(info.value) and "section name" in str(info.value)


def test_parser_and_from_options_apply_the_rule():
    with pytest.raises(UnitFileError, match=r"^x.service: line 2: control character U\+0000 \(NUL\)"):
        UnitFile.parse(b"[Service]\nExecStart=/bin/true\x00x\n", source="x.service")
    with pytest.raises(UnitFileError, match="control character U\\+000D \\(CR\\) in the value"):
        UnitFile.from_options([("Service", "ExecStart", "a\rExecStartPre=/evil")])
    with pytest.raises(UnitFileError, match="U\\+0000"):
        UnitFile.from_options([("Service", "ExecStart", "/bin/true\x00x")])
    # CRLF files still parse, to the same unit as LF files
    assert UnitFile.parse("[Unit]\r\nDescription=x\r\n") == UnitFile.parse("[Unit]\nDescription=x\n")


@settings(max_examples=examples(300), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(max_size=40), st.sampled_from(["Unit", "Service"]), st.sampled_from(["Description", "ExecStart"]))
def test_no_accepted_unit_serializes_to_a_refused_character(value, section, name):
    """Whatever from_options accepts, its serialization (what the agent writes) passes the rule,
    and parses back to the same unit."""
    try:
        unit = UnitFile.from_options([(section, name, value)])
    except UnitFileError:
        return
    text = unit.serialize()
    assert find_control(text) is None
    assert UnitFile.parse(text) == unit


def test_agent_never_writes_a_refused_unit():
    refused = _refuse_unreadable({"a.service": "[Service]\nExecStart=/bin/true\x00x\n",
                                  "b.service": "[Service]\nExecStart=/bin/true\n"})
    assert list(refused) == ["a.service"] and "U+0000 (NUL)" in refused["a.service"]


# ---------------------------------------------------------------------------- real fleetd + etcd


@pytest.fixture
async def api(etcd_settings, tmp_path):
    async with ApiHarness(etcd_settings, tmp_path, Machine(MID, "127.0.0.1")) as harness:
        yield harness


@pytest.mark.parametrize("option", [
    {"section": "Service", "name": "ExecStart", "value": "/bin/true\u0000x"},
    {"section": "Service", "name": "ExecStart", "value": "/bin/true\rExecStartPre=/bin/evil"},
    {"section": "Unit", "name": "Description", "value": "\u001b]0;owned\u0007"},
    {"section": "Service", "name": "Exec\u0000Start", "value": "/bin/true"},
    {"section": "Serv\u0000ice", "name": "ExecStart", "value": "/bin/true"},
])
async def test_api_refuses_control_characters(api, option):
    status, _, body = await api.call("PUT", "/fleet/v1/units/nul.service",
                                     body={"desiredState": "launched", "options": HELLO_OPTIONS + [option]})
    assert status == 400, body
    assert "control character" in body["error"]["message"]
    assert set(body) == {"error"} and body["error"]["code"] == 400
    assert await api.registry.get_unit("nul.service") is None
    status, _, _ = await api.call("GET", "/fleet/v1/units/nul.service")
    assert status == 404


async def test_a_body_written_around_the_api_is_never_served(api):
    """A body with a NUL put straight into etcd (an old client, a hand-made key): the registry
    ignores it and the API lists nothing, instead of failing every listing."""
    from fleetd.model import DesiredState
    from fleetd.registry import codec

    reg = api.registry
    bad = "[Service]\nExecStart=/bin/true\x00x\n"
    bad_hash = hashlib.sha1(bad.encode()).hexdigest()
    host, port = api.settings.endpoints[0].rsplit("//", 1)[-1].rsplit(":", 1)
    async with aetcd.Client(host=host, port=int(port)) as raw:  # a hostile writer, around every check
        await raw.put(reg.keys.body(bad_hash).encode(), bad.encode())
        await raw.put(reg.keys.job("evil.service").encode(),
                      codec.encode_job("evil.service", bad_hash, DesiredState.LAUNCHED))
    status, _, body = await api.call("GET", "/fleet/v1/units")
    assert status == 200
    assert [u["name"] for u in body.get("units", [])] == []
    status, _, body = await api.call("GET", "/fleet/v1/units/evil.service")
    assert status == 404, body  # as if it did not exist, like the list
    status, _, _ = await api.call("DELETE", "/fleet/v1/units/evil.service")
    assert status == 204  # and an operator can still remove it
    assert await api.registry.list_units() == []


def test_fleetctl_refuses_a_file_with_nul(etcd_settings, tmp_path, monkeypatch):
    with ThreadedApiServer(etcd_settings, tmp_path / "srv", Machine(MID, "10.1.2.3")) as srv:
        monkeypatch.chdir(tmp_path)
        (tmp_path / "nul.service").write_bytes(b"[Service]\nExecStart=/bin/true\x00x\n")
        result = CliRunner().invoke(cli, [f"--endpoint={srv.unix_endpoint}", "submit", "nul.service"],
                                    catch_exceptions=False)
        assert result.exit_code == 1
        assert "nul.service: line 2: control character U+0000 (NUL)" in result.output
        assert srv.run(srv.harness.registry.get_unit("nul.service")) is None
