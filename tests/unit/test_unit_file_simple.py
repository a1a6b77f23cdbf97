"""fleetd/unit/file.py: the lexer's one-loop path for plain unit texts (`_Lexer._run_simple`:
short `[Section]` and `Name=Value` lines, no comment, continuation, blank-led line or CR) gives
the general path's options, in the order `parse()` keeps; anything else goes to the general
path (hypothesis properties over the syntax's special characters)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from _depth import examples
from fleetd.errors import UnitFileError
from fleetd.unit.file import UnitFile, _group, _Lexer

unit_chars = st.sampled_from(list("[]#;=\\\"% \t\r\nabcXYZ09\u00e9\u2028\x85\ufeff"))
unit_like_text = st.text(alphabet=unit_chars, max_size=120)
plain_line = st.one_of(
    st.sampled_from(["", "[Unit]", "[Service]", "[X-Fleet]", "[]", "[a b]", "[Unit] ", "[Unit", "[a]b]"]),
    st.tuples(st.text(alphabet="abcXY -_\t\u00e9", max_size=8), st.text(alphabet="ab =\"%\\\t\u00e9\u2028", max_size=12))
    .map(lambda p: f"{p[0]}={p[1]}"),
    st.sampled_from(["# c", "; c", " x=1", "x", "x=a\\", "x=a\\ ", "=v", "x" * 600 + "=1"]),
)
plain_text = st.lists(plain_line, max_size=12).map("\n".join) | st.lists(plain_line, max_size=12).map(
    lambda lines: "\n".join(lines) + "\n")


def _general(text: str):
    try:
        return ("options", tuple(_group(_Lexer(text, "t").run_general())))
    except UnitFileError as exc:
        return ("error", str(exc))


def _parsed(text: str):
    try:
        return ("options", UnitFile.parse(text, source="t").options)
    except UnitFileError as exc:
        return ("error", str(exc))


@settings(max_examples=examples(2000), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(plain_text, unit_like_text, unit_like_text.map(lambda s: "[Service]\n" + s)))
def test_parse_is_the_general_lexers_answer(text):
    assert _parsed(text) == _general(text)


def test_plain_units_take_the_one_loop_path_and_others_do_not():
    plain = "[Unit]\nDescription=bench unit 1\n\n[Service]\nExecStart=/bin/sleep infinity\n"
    lexer = _Lexer(plain, "t")
    assert lexer._run_simple() is not None and lexer.grouped
    regrouped = _Lexer("[A]\nx=1\n[B]\ny=2\n[A]\nz=3\n", "t")
    assert regrouped._run_simple() is not None and not regrouped.grouped
    assert UnitFile.parse("[A]\nx=1\n[B]\ny=2\n[A]\nz=3\n").serialize() == "[A]\nx=1\nz=3\n\n[B]\ny=2\n"
    for text in ("# c\n[Unit]\n", "[Unit]\r\nA=1\r\n", "[Unit]\nA=1\\\n B\n", "[Unit]\n  A=1\n", "A=1\n",
                 "[Unit]\nA\n", "[Unit] \n"):
        assert _Lexer(text, "t")._run_simple() is None, text
