"""systemd unit-file syntax: parse, canonical serialization, content hash.

The parser follows go-systemd's ``unit.Deserialize`` as vendored by fleet (the 2015-2016
lexer with ``SYSTEMD_LINE_MAX`` and pass-through line continuations), so that a unit parsed
here serializes to the very bytes fleet would hash:

* ``[Name]`` starts a section; the name is taken verbatim up to the first ``]`` and only
  whitespace may follow it on the line.
* A line whose first non-blank character is ``#`` or ``;`` is a comment. A comment line
  ending in ``\\`` (after dropping one trailing space) swallows the next line too.
* ``Name=Value``: the name is trimmed, the value is trimmed (Go ``unicode.IsSpace``).
  ``Key=`` gives an empty value. Repeated keys are kept, in order.
* A value line ending in ``\\`` continues on the next line; the backslash and the newline
  are *kept* in the value (systemd joins them when it reads the serialized file). The
  value ends at the first line that does not end in ``\\`` or at a blank line.
* A run of 2048 or more bytes without CR/LF fails with ``line too long (max 2048 bytes)``.

Deliberate deviations from go-systemd, all in favour of rejecting input it would mangle
(documented so nobody "fixes" them back):

* text before the first section is an error (go-systemd silently skips it);
* a section header must end on its own line (go-systemd reads up to ``]`` across lines);
* input must be valid UTF-8 (go-systemd turns bad bytes in names into U+FFFD);
* a value whose last line ends in a backslash followed by blanks (or by CR, as in a CRLF
  file) is rejected: go-systemd trims the blanks, and the serialized value would then
  turn into a continuation that swallows the next line;
* a continuation line at end of file keeps its newline, exactly as if the file ended with
  one (go-systemd drops it, which makes parse/serialize not idempotent).
* Options are grouped by section in first-seen order (the order in which serialization
  writes them), so that ``parse(serialize(u)) == u`` for every parsed unit ``u``.

A UTF-8 byte-order mark at the very start is skipped. Control characters systemd cannot read
(NUL, a CR that does not end a line, ESC, ...) are refused: see fleetd.unit.control, the one
rule fleetctl, the API and the agent share.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Iterable

from fleetd.errors import UnitFileError
from fleetd.unit.control import check_option, check_text

#: go-systemd's SYSTEMD_LINE_MAX.
LINE_MAX = 2048
_SHORT_LINE = LINE_MAX // 4  # characters: a line with fewer is under LINE_MAX bytes whatever they are

# Go's unicode.IsSpace: Latin-1 whitespace plus the Unicode White_Space property.
# (Python's str.isspace also counts U+001C..U+001F, which Go does not.)
_GO_SPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_GO_SPACE_STR = "".join(sorted(_GO_SPACE))


def go_trim_space(s: str) -> str:
    """Go's strings.TrimSpace (Python's str.strip() trims more characters)."""
    return s.strip(_GO_SPACE_STR)


def _go_lstrip(s: str) -> str:
    return s.lstrip(_GO_SPACE_STR)


def _short(text: str, limit: int = 40) -> str:
    """A one-line, double-quoted rendering of user text for error messages."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return json.dumps(text)


@dataclass(frozen=True)
class UnitOption:
    section: str
    name: str
    value: str


@dataclass(frozen=True)
class UnitFile:
    options: tuple[UnitOption, ...]

    # -- construction -----------------------------------------------------------------

    @classmethod
    def parse(cls, text: str | bytes, *, source: str = "<unit>") -> "UnitFile":
        """Parse unit-file text; raise UnitFileError("<source>: line N: <reason>")."""
        lexer = _Lexer(text, source)
        options = lexer.run()
        return cls(tuple(options) if lexer.grouped else _group(options))

    @classmethod
    def parse_stored(cls, raw: bytes, unit_hash: str, *, source: str = "<unit>") -> "UnitFile":
        """parse() of a body stored under its hash (the registry's content-addressed bodies):
        when `raw` hashes to `unit_hash`, it is the serialization that hash was taken of (what
        every writer stores), so both are kept instead of being worked out again: one SHA-1 of
        the bytes at hand instead of serializing and hashing the parsed unit (~10 us a body)."""
        unit = cls.parse(raw, source=source)
        if hashlib.sha1(raw).hexdigest() == unit_hash:
            unit.__dict__["_serialized"] = raw.decode("utf-8")
            unit.__dict__["hash"] = unit_hash
        return unit

    @classmethod
    def from_options(cls, options: Iterable[UnitOption | tuple[str, str, str]], *,
                     source: str = "<unit>") -> "UnitFile":
        """Build a unit from (section, name, value) options, e.g. from the JSON API.

        The options are grouped by section (first-seen order) like parse() does. Options
        that could not survive a write-and-read as a unit file (a name with "=" or a newline,
        a section name with "]", a raw newline in a value, ...) raise UnitFileError.
        """
        opts: list[UnitOption] = []
        for opt in options:
            if not isinstance(opt, UnitOption):
                section, name, value = opt
                opt = UnitOption(section, name, value)
            for field in (opt.section, opt.name, opt.value):
                if not isinstance(field, str):
                    raise UnitFileError(
                        f"{source}: option {opt!r}: section, name and value must be strings")
            check_option(opt.section, opt.name, opt.value, source)
            opts.append(opt)
        for opt in opts:
            single = cls((opt,))
            try:
                again = cls.parse(single.serialize(), source=source)
            except UnitFileError:
                again = None
            if again != single:
                raise UnitFileError(
                    f"{source}: option [{opt.section}] {_short(opt.name)}={_short(opt.value)} "
                    "cannot be represented in a unit file")
        unit = cls(_group(opts))
        return unit

    # -- output -----------------------------------------------------------------------

    def serialize(self) -> str:
        """go-systemd's unit.Serialize (the fleet-era version): the bytes fleet hashes."""
        return self._serialized

    @functools.cached_property
    def _serialized(self) -> str:  # computed once per (immutable) unit
        if not self.options:
            return ""
        order: list[str] = []
        by_section: dict[str, list[UnitOption]] = {}
        for opt in self.options:
            if opt.section not in by_section:
                order.append(opt.section)
                by_section[opt.section] = []
            by_section[opt.section].append(opt)
        parts: list[str] = []
        for i, section in enumerate(order):
            parts.append(f"[{section}]\n")
            for opt in by_section[section]:
                parts.append(f"{opt.name}={opt.value}\n")
            if i < len(order) - 1:
                parts.append("\n")
        return "".join(parts)

    def __str__(self) -> str:
        return self.serialize()

    @functools.cached_property
    def hash(self) -> str:
        """fleet's unit hash: SHA1 (hex) of the serialization."""
        return hashlib.sha1(self.serialize().encode("utf-8")).hexdigest()

    # -- queries ----------------------------------------------------------------------

    def sections(self) -> tuple[str, ...]:
        """Section names in first-seen order."""
        return tuple(dict.fromkeys(opt.section for opt in self.options))

    def values(self, section: str, name: str) -> list[str]:
        """All values of `name` in `section`, in file order (empty list if none)."""
        return [o.value for o in self.options if o.section == section and o.name == name]

    def value(self, section: str, name: str, default: str | None = None) -> str | None:
        """The last value of `name` in `section` (systemd's "last assignment wins")."""
        found = self.values(section, name)
        return found[-1] if found else default

    def section(self, section: str) -> tuple[UnitOption, ...]:
        return tuple(o for o in self.options if o.section == section)

    @property
    def description(self) -> str:
        """The first [Unit] Description= (fleet's UnitFile.Description), or ""."""
        found = self.values("Unit", "Description")
        return found[0] if found else ""


def _group(options: Iterable[UnitOption]) -> tuple[UnitOption, ...]:
    """Stable-group options by section in first-seen order (serialization order)."""
    by_section: dict[str, list[UnitOption]] = {}
    for opt in options:
        by_section.setdefault(opt.section, []).append(opt)
    return tuple(opt for opts in by_section.values() for opt in opts)


class _Lexer:
    """A line-oriented equivalent of go-systemd's rune-by-rune lexer (see module doc)."""

    def __init__(self, text: str | bytes, source: str) -> None:
        self.source = source
        if isinstance(text, (bytes, bytearray, memoryview)):
            raw = bytes(text)
            try:
                decoded = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self._fail_encoding(raw, exc.start)
        elif isinstance(text, str):
            decoded = text
            try:
                raw = text.encode("utf-8")
            except UnicodeEncodeError as exc:
                self._fail_encoding(text, exc.start)
        else:
            raise UnitFileError(f"{source}: unit file must be text or bytes, not {type(text).__name__}")
        if decoded.startswith("\ufeff"):
            decoded = decoded[1:]
        check_text(decoded, source)
        # Physical lines split on LF only (as bufio.ReadBytes('\n')); the last piece is the
        # text after the final LF ("" when the file ends with a newline).
        self.has_cr = "\r" in decoded
        self.grouped = False   # whether run()'s options are known to be grouped by section already
        self.lines = decoded.split("\n")
        self.n = len(self.lines)
        self.i = 0

    def _fail_encoding(self, data: str | bytes, pos: int) -> None:
        newline = b"\n" if isinstance(data, bytes) else "\n"
        line = data.count(newline, 0, pos) + 1
        col = pos - (data.rfind(newline, 0, pos) + 1) + 1
        if isinstance(data, bytes):
            what = f"invalid UTF-8 (byte 0x{data[pos]:02x} at column {col})"
        else:
            what = f"invalid UTF-8 (unencodable character U+{ord(data[pos]):04X} at column {col})"
        raise UnitFileError(f"{self.source}: line {line}: {what}")

    def fail(self, lineno: int, reason: str) -> None:
        raise UnitFileError(f"{self.source}: line {lineno}: {reason}")

    def next_line(self) -> tuple[int, str, bool]:
        """Consume one physical line: (1-based number, text without LF, at_eof)."""
        idx = self.i
        line = self.lines[idx]
        self.i += 1
        eof = self.i >= self.n
        # a character is at most 4 bytes of UTF-8: a line shorter than LINE_MAX // 4 characters
        # (nearly every line) cannot be too long, and is not encoded to find out
        if len(line) >= _SHORT_LINE and max((len(seg.encode("utf-8")) for seg in line.split("\r")),
                                            default=0) >= LINE_MAX:
            self.fail(idx + 1, f"line too long (max {LINE_MAX} bytes)")
        if eof and line.endswith("\r"):
            # toEOL trims "\r" only when it is not followed by "\n"
            line = line[:-1]
        return idx + 1, line, eof

    def run(self) -> list[UnitOption]:
        simple = self._run_simple()
        return simple if simple is not None else self.run_general()

    def _run_simple(self) -> list[UnitOption] | None:
        """The options of a text made only of short `[Section]` lines, `Name=Value` lines that
        start with neither a blank nor a comment and do not end in a backslash, and empty
        lines, with no CR anywhere — most units — in one loop; None for anything else (then
        `run_general`, which also gives the errors). Its answer is run_general's for such a
        text: the same lines read by the same rules, without the per-line steps that cannot
        apply to them (comments, continuations, CR, the line-length check)."""
        if self.has_cr:
            return None
        lines = self.lines
        options: list[UnitOption] = []
        section: str | None = None
        seen: set[str] = set()
        grouped = True   # no section named again after another: the options are in _group's order
        blanks = _GO_SPACE
        for line in lines:
            if not line:
                continue
            if len(line) >= _SHORT_LINE or line[0] in blanks:
                return None
            first = line[0]
            if first == "[":
                if line[-1] != "]" or len(line) < 2 or "]" in line[1:-1]:
                    return None
                if line[1:-1] != section:
                    section = line[1:-1]
                    if section in seen:
                        grouped = False
                    seen.add(section)
            elif first in "#;" or section is None:
                return None
            else:
                eq = line.find("=")
                if eq == -1:
                    return None
                value = go_trim_space(line[eq + 1:])
                if value.endswith("\\"):
                    return None
                options.append(UnitOption(section, go_trim_space(line[:eq]), value))
        self.i = self.n
        self.grouped = grouped
        return options

    def run_general(self) -> list[UnitOption]:
        options: list[UnitOption] = []
        section: str | None = None
        while self.i < self.n:
            if self.i == self.n - 1 and self.lines[self.i] == "":
                break  # the empty piece after a final "\n"
            lineno, line, _ = self.next_line()
            rest = _go_lstrip(line)
            if not rest:
                continue
            first = rest[0]
            if first in "#;":
                self._skip_comment(rest[1:])
            elif first == "[":
                end = rest.find("]", 1)
                if end == -1:
                    self.fail(lineno, "unable to find end of section")
                section = rest[1:end]
                garbage = go_trim_space(rest[end + 1:])
                if garbage:
                    self.fail(lineno, f"found garbage after section name [{section}]: {_short(garbage)}")
            elif section is None:
                self.fail(lineno, f"option outside of a section: {_short(rest)}")
            else:
                options.append(self._option(section, lineno, rest))
        return options

    def _skip_comment(self, rest: str) -> None:
        line = rest
        while True:
            if line.endswith(" "):
                line = line[:-1]  # bytes.TrimSuffix(line, " "): one space only
            if not line.endswith("\\") or self.i >= self.n:
                return
            _, line, _ = self.next_line()

    def _option(self, section: str, lineno: int, rest: str) -> UnitOption:
        eq = rest.find("=")
        cr = rest.find("\r")
        if eq == -1 or (cr != -1 and cr < eq):
            if cr == -1 and self.i >= self.n:
                self.fail(lineno, f"unexpected end of file while parsing option name {_short(rest)}")
            self.fail(lineno, "unexpected newline encountered while parsing option name "
                              f"{_short(rest[:cr] if cr != -1 else rest)}")
        name = go_trim_space(rest[:eq])
        line = rest[eq + 1:]
        if not line.endswith("\\"):  # one line, no continuation (the common case): what the loop gives
            value = go_trim_space(line)
            if value.endswith("\\"):
                self.fail(lineno, f"option {name}: value ends in a backslash followed by "
                                  "blanks or CR (a continuation must end the line)")
            return UnitOption(section, name, value)
        parts: list[str] = []
        last_lineno = lineno
        while True:
            if go_trim_space(line):
                parts.append(line)
                if line.endswith("\\"):
                    # go-systemd omits the "\n" at EOF; we keep it (see module doc)
                    parts.append("\n")
                    if self.i >= self.n or (self.i == self.n - 1 and self.lines[self.i] == ""):
                        break
                    last_lineno, line, _ = self.next_line()
                    continue
            break
        partial = "".join(parts)
        if partial.endswith("\n"):
            value = go_trim_space(partial) + "\n"
        else:
            value = go_trim_space(partial)
            if value.endswith("\\"):
                self.fail(last_lineno, f"option {name}: value ends in a backslash followed by "
                                       "blanks or CR (a continuation must end the line)")
        return UnitOption(section, name, value)
