"""The one rule for control characters in unit files, used by fleetctl, the API and the agent.

systemd reads a unit file line by line and ends a line at LF, CR *and NUL* (``read_line_full``'s
EOL characters): a value ``"/bin/true\\x00ExecStartPre=/evil"`` written to disk is two lines to
systemd, whatever fleet stored. The other C0 controls, DEL and the C1 controls (Unicode category
``Cc``) have no meaning in a unit file either, and they are terminal escape material when
``fleetctl cat``/``list-units`` print them. So the rule is:

* no ``Cc`` character anywhere in a unit file, except TAB, LF (the line end; inside a value only
  as a ``\\``-continuation, which the parser/serializer enforce) and CR directly before LF or
  at the end of the file (a CRLF file, read as systemd and go-systemd read it);
* no ``Cc`` character at all, TAB aside, in a section or option name, and none but TAB and the
  continuation LF in a value.

`find_control` is the pure check; `check_text`/`check_option` raise `UnitFileError` with a
one-line message naming the source, the line or option, and the character.
"""

from __future__ import annotations

import re
import unicodedata

from fleetd.errors import UnitFileError

# Cc = U+0000..U+001F, U+007F..U+009F. TAB is allowed everywhere, LF as a line end.
_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]|\r(?!\n|\Z)")
_IN_NAME = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_IN_VALUE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def describe(ch: str) -> str:
    """``U+0000 (NUL)``: the code point and, where Unicode has one, its control name."""
    names = {"\x00": "NUL", "\r": "CR", "\n": "LF", "\x1b": "ESC", "\x7f": "DEL", "\x0b": "VT",
             "\x0c": "FF", "\x08": "BS", "\x07": "BEL", "\x85": "NEL", "\x9b": "CSI"}
    name = names.get(ch) or unicodedata.name(ch, "")
    return f"U+{ord(ch):04X}" + (f" ({name})" if name else "")


def find_control(text: str, *, where: str = "text") -> int | None:
    """Index of the first control character the rule refuses in `text`, or None.

    `where` is "text" (a whole unit file), "name" (a section or option name) or "value".
    """
    pattern = {"text": _IN_TEXT, "name": _IN_NAME, "value": _IN_VALUE}[where]
    match = pattern.search(text)
    return None if match is None else match.start()


def check_text(text: str, source: str) -> None:
    """Raise UnitFileError("<source>: line N: control character U+.... at column C") if the
    unit-file text holds a control character the rule refuses."""
    pos = find_control(text)
    if pos is None:
        return
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    raise UnitFileError(f"{source}: line {line}: control character {describe(text[pos])} at "
                        f"column {col} (systemd cannot read it)")


def check_option(section: str, name: str, value: str, source: str) -> None:
    """Raise UnitFileError naming the option if a field holds a refused control character."""
    for field, text, where in (("section name", section, "name"), ("option name", name, "name"),
                               ("value", value, "value")):
        pos = find_control(text, where=where)
        if pos is not None:
            raise UnitFileError(
                f"{source}: option [{_printable(section)}] {_printable(name)}: "
                f"control character {describe(text[pos])} in the {field} (systemd cannot read it)")


def _printable(text: str, limit: int = 40) -> str:
    """Text for an error message with control characters shown as escapes."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return "".join(f"\\x{ord(ch):02x}" if unicodedata.category(ch) == "Cc" else ch for ch in text)
