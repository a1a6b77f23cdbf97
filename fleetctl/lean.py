"""The standard library's JSON, URL quoting, URL splitting and TCP connections for fleetctl's
fast paths, on C modules alone (`_json`, `_socket`): `import json`, `urllib.parse` and `socket`
each import `re` (and `enum`, `functools`, `collections`...), ~10-15 ms of a 15 ms interpreter
start on this machine, for a process whose whole cluster work takes milliseconds.

Every function gives the answer of the standard library function it stands for (tests/unit/
test_fleetctl_lean.py checks them against those, with hypothesis), and hands anything outside
the simple cases it knows (non-ASCII text, IPv6 hosts, user info in URLs...) to that function.
"""

from __future__ import annotations

import _socket

try:
    import _json
except ImportError:  # pragma: no cover - CPython always has it
    _json = None

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_WHITESPACE = " \t\n\r"


class _Context:
    """What the C scanner reads from a json.JSONDecoder (json.loads' defaults)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}[name]


_scan = _json.make_scanner(_Context()) if _json is not None else None


def loads(data: bytes | str):
    """json.loads (ValueError for what it refuses: the same json.JSONDecodeError, from json)."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    except UnicodeDecodeError:
        text = None
    if _scan is None or text is None or text.startswith("\ufeff"):
        import json

        return json.loads(data)
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration:
        end = -1
    if end < 0 or text[end:].strip(_WHITESPACE):
        import json  # the standard library's error message

        return json.loads(data)
    return value


def dumps(value) -> str:
    """json.dumps(value, separators=(",", ":"), ensure_ascii=False) for dicts with str keys,
    lists, str, int, bool and None (anything else: json.dumps itself)."""
    if _json is None:
        import json

        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    parts: list[str] = []
    if not _dump(value, parts):
        import json

        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return "".join(parts)


def _dump(value, out: list[str]) -> bool:
    if isinstance(value, str):
        out.append(_json.encode_basestring(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif type(value) is int:
        out.append(int.__repr__(value))
    elif type(value) is dict:
        out.append("{")
        for i, (k, v) in enumerate(value.items()):
            if type(k) is not str:
                return False
            if i:
                out.append(",")
            out.append(_json.encode_basestring(k))
            out.append(":")
            if not _dump(v, out):
                return False
        out.append("}")
    elif type(value) in (list, tuple):
        out.append("[")
        for i, v in enumerate(value):
            if i:
                out.append(",")
            if not _dump(v, out):
                return False
        out.append("]")
    else:
        return False
    return True


def quote(text: str, safe: str = "/") -> str:
    """urllib.parse.quote(text, safe=safe)."""
    if not text.isascii() or not safe.isascii():
        from urllib.parse import quote as std

        return std(text, safe=safe)
    keep = _SAFE.union(safe.encode())
    return "".join(chr(b) if b in keep else f"%{b:02X}" for b in text.encode())


def urlencode(pairs) -> str:
    """urllib.parse.urlencode of (str, str) pairs."""
    items = list(pairs) if isinstance(pairs, (list, tuple)) else None
    if items is None or not all(type(p) is tuple and len(p) == 2 and type(p[0]) is str and type(p[1]) is str
                                and p[0].isascii() and p[1].isascii() for p in items):
        from urllib.parse import urlencode as std

        return std(pairs)
    return "&".join(f"{_quote_plus(k)}={_quote_plus(v)}" for k, v in items)


def _quote_plus(text: str) -> str:
    return quote(text, safe=" ").replace(" ", "+") if " " in text else quote(text, safe="")


def split_url(url: str):
    """(scheme, netloc, path, query, fragment, hostname, port) as urllib.parse.urlsplit gives
    them, for an ASCII http(s) URL without user info, IPv6 brackets, query or fragment; None
    for anything else (the caller asks urlsplit). ValueError for a port urlsplit refuses."""
    if not url.isascii() or not url.isprintable() or any(c in url for c in "@[]?#%\\ "):
        return None
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return None
    slash = rest.find("/")
    netloc, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    host, _, port_text = netloc.partition(":")
    port = None
    if port_text:  # "host:" has no port, as urlsplit's
        if not port_text.isdigit():
            raise ValueError(f"Port could not be cast to integer value as {port_text!r}")
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError("Port out of range 0-65535")
    return scheme.lower(), netloc, path, "", "", (host.lower() or None), port


class Socket(_socket.socket):
    """_socket.socket with `with` (what socket.socket adds that the fast paths use)."""

    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect_unix(path: str, timeout: float) -> Socket:
    sock = Socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def create_connection(address: tuple, timeout: float) -> Socket:
    """socket.create_connection(address, timeout): the first address that connects, else the
    first address's error."""
    host, port = address
    errors: list[OSError] = []
    for family, kind, proto, _name, where in _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM):
        sock = Socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(where)
            return sock
        except OSError as exc:
            errors.append(exc)
            sock.close()
    if errors:
        raise errors[0]
    raise OSError("getaddrinfo returns an empty list")
