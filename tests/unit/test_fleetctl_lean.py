"""fleetctl/lean.py against the standard library functions it stands for (the fast paths'
JSON, URL quoting and splitting, TCP connections without importing json, urllib.parse, socket)."""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse

import pytest
from hypothesis import given, settings, strategies as st

from _depth import examples

from fleetctl import lean

ASCIIISH = st.text(st.characters(min_codepoint=0, max_codepoint=0x7F)) | st.text()
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20)


@given(JSON_VALUES)
def test_dumps_is_json_dumps_compact(value):
    assert lean.dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@given(JSON_VALUES, st.sampled_from(["", " ", "\n\t", " \r\n"]), st.booleans())
def test_loads_is_json_loads(value, space, as_bytes):
    text = space + json.dumps(value, ensure_ascii=bool(space)) + space
    data = text.encode() if as_bytes else text
    assert lean.loads(data) == json.loads(data)


@pytest.mark.parametrize("bad", [b"", b"  ", b"{", b"[1,]", b"1 2", b"nul", "\ufeff{}", b"\xff\xfe{\x00}\x00",
                                 b'{"a":1}x', b"NaN", b"[Infinity, -Infinity]", b"\xef\xbb\xbf[1]"])
def test_loads_answers_or_fails_as_json_loads(bad):
    try:
        expected = json.loads(bad)
    except ValueError as exc:
        with pytest.raises(type(exc)) as caught:
            lean.loads(bad)
        assert str(caught.value) == str(exc)
    else:
        got = lean.loads(bad)
        assert repr(got) == repr(expected)


@given(ASCIIISH, st.sampled_from(["", "/", "@:", " ", "~é"]))
def test_quote_is_urllib_quote(text, safe):
    assert lean.quote(text, safe=safe) == urllib.parse.quote(text, safe=safe)


@given(st.lists(st.tuples(ASCIIISH, ASCIIISH), max_size=5))
def test_urlencode_is_urllib_urlencode(pairs):
    assert lean.urlencode(pairs) == urllib.parse.urlencode(pairs)


URL_PARTS = st.text(st.sampled_from("aB0.-_:/%@?#[] \t"), max_size=12)


@settings(max_examples=examples(500))
@given(st.sampled_from(["http://", "https://", "HTTP://", "ftp://", "http:/", ""]), URL_PARTS,
       st.sampled_from(["", ":", ":80", ":0", ":65535", ":65536", ":x1", ":-1", ":٣"]), URL_PARTS)
def test_split_url_is_urlsplit(scheme, host, port, path):
    url = scheme + host + port + ("/" + path if path else "")
    try:
        std = urllib.parse.urlsplit(url)
        expected = (std.scheme, std.netloc, std.path, std.query, std.fragment, std.hostname, std.port)
    except ValueError as exc:
        expected = exc
    try:
        got = lean.split_url(url)
    except ValueError as exc:
        assert isinstance(expected, ValueError) and str(exc) == str(expected)
        return
    if got is not None:
        assert got == expected


def test_split_url_of_the_lab_endpoint():
    assert lean.split_url("http://10.213.40.11:54728") == ("http", "10.213.40.11:54728", "", "", "", "10.213.40.11", 54728)
    assert lean.split_url("https://Node-1:1/api/") == ("https", "Node-1:1", "/api/", "", "", "node-1", 1)


def test_connections_talk_like_the_socket_modules(tmp_path):
    """create_connection and connect_unix: a real listener answers, `with` closes; a refused
    port raises the same error as socket.create_connection."""
    server = socket.create_server(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "s"))
    unix.listen()

    def answer(listener):
        conn, _ = listener.accept()
        with conn:
            conn.sendall(conn.recv(100).upper())

    for listener in (server, unix):
        threading.Thread(target=answer, args=(listener,), daemon=True).start()
    for sock in (lean.create_connection((b"127.0.0.1", server.getsockname()[1]), 2.0),
                 lean.connect_unix(str(tmp_path / "s"), 2.0)):
        with sock:
            sock.sendall(b"ping")
            assert sock.recv(100) == b"PING"
        assert sock.fileno() == -1
    port = server.getsockname()[1]
    server.close()
    unix.close()
    with pytest.raises(OSError) as std:
        socket.create_connection(("127.0.0.1", port), timeout=2.0)
    with pytest.raises(OSError) as ours:
        lean.create_connection((b"127.0.0.1", port), 2.0)
    assert (type(ours.value), ours.value.errno, ours.value.strerror) == (type(std.value), std.value.errno, std.value.strerror)
