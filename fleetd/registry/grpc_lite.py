"""etcd's gRPC API (KV.Txn and Watch.Watch only) over HTTP/2 on the standard library, for
fleetctl's etcd fast path where etcd's JSON gateway cannot serve it (fleetd/registry/gateway.py).

etcd 3.4 with `auth enable` and certificate users (fleet-lab's default) refuses every request
through its gateway ("CommonName of client sending a request against gateway will be
ignored"): the gateway calls etcd on a connection of its own, so the client's certificate is
not the caller's. Spoken directly, the TLS connection is the client's and etcd takes the user
from its certificate as it does for aetcd. grpcio, protobuf and aetcd cost ~0.3 s of imports
(the pure-Python grpclib needs asyncio, h2 and protobuf too); this is an HTTP/2 client reduced
to what unary calls and one streamed watch need (frames,
SETTINGS and PING acknowledgements, flow control; request headers encoded as HPACK literals;
the answers' headers are never decoded: a call that answers a message succeeded, one that ends
without one failed), and a protobuf encoder and decoder for the few etcd messages used
(etcd's api/etcdserverpb/rpc.proto and api/mvccpb/kv.proto: field numbers below).

`GrpcTransport` has the `txn`, `watch` and `close` of `Gateway`, with the same JSON-shaped
operations and answers (base64 keys and values, revisions as strings), so `UnitGateway` runs
on either.
"""

from __future__ import annotations

import socket
import struct
import time

from fleetd.registry.gateway import Gateway, GatewayError, b64, unb64

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
MAX_FRAME = 16384  # SETTINGS_MAX_FRAME_SIZE's default: what we send at most
OUR_WINDOW = (1 << 31) - 1  # we read everything at once: never a window to wait for
TXN_PATH = "/etcdserverpb.KV/Txn"
WATCH_PATH = "/etcdserverpb.Watch/Watch"
TARGETS = {"VERSION": 0, "CREATE": 1, "MOD": 2, "VALUE": 3}
RESULTS = {"EQUAL": 0, "GREATER": 1, "LESS": 2, "NOT_EQUAL": 3}

# ---------------------------------------------------------------------------- protobuf


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def pb_int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def pb_bytes(field: int, value: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(value)) + value


def pb_parse(data: bytes) -> dict[int, list]:
    """Fields of a message: varints as ints, length-delimited as bytes (fixed ones skipped)."""
    fields: dict[int, list] = {}
    i, end = 0, len(data)

    def varint() -> int:
        nonlocal i
        shift = result = 0
        while True:
            byte = data[i]
            i += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    while i < end:
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            value: object = varint()
        elif wire == 2:
            size = varint()
            value, i = data[i:i + size], i + size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
            continue
        else:
            raise GatewayError("etcd: an answer that is not protobuf")
        fields.setdefault(field, []).append(value)
    return fields


def _one(fields: dict[int, list], field: int, default=0):
    values = fields.get(field)
    return values[-1] if values else default


def encode_op(op: dict) -> bytes:
    """A RequestOp (1 range, 2 put, 3 delete range) from its JSON shape."""
    if "request_range" in op:
        r = op["request_range"]
        body = pb_bytes(1, unb64(r["key"])) + (pb_bytes(2, unb64(r["range_end"])) if "range_end" in r else b"")
        return pb_bytes(1, body)
    if "request_put" in op:
        r = op["request_put"]
        return pb_bytes(2, pb_bytes(1, unb64(r["key"])) + pb_bytes(2, unb64(r["value"])))
    r = op["request_delete_range"]
    return pb_bytes(3, pb_bytes(1, unb64(r["key"])))


def encode_compare(compare: dict) -> bytes:
    """A Compare: result 1, target 2, key 3, then the target_union's create_revision 5 or
    mod_revision 6 (a oneof: written even when 0)."""
    target = compare["target"]
    body = pb_int(1, RESULTS[compare["result"]]) + pb_int(2, TARGETS[target]) + pb_bytes(3, unb64(compare["key"]))
    if target == "CREATE":
        return body + pb_int(5, int(compare["create_revision"]))
    if target == "MOD":
        return body + pb_int(6, int(compare["mod_revision"]))
    raise GatewayError(f"compare on {target}: not supported here")


def decode_kv(data: bytes) -> dict:
    """A KeyValue (key 1, create_revision 2, mod_revision 3, version 4, value 5) in JSON shape."""
    f = pb_parse(data)
    return {"key": b64(_one(f, 1, b"")), "create_revision": str(_one(f, 2)), "mod_revision": str(_one(f, 3)),
            "version": str(_one(f, 4)), "value": b64(_one(f, 5, b""))}


def decode_txn(data: bytes) -> tuple[bool, list, int]:
    """TxnResponse (header 1, succeeded 2, responses 3) as Gateway.txn answers."""
    f = pb_parse(data)
    revision = _one(pb_parse(_one(f, 1, b"")), 3)
    results: list = []
    for raw in f.get(3, []):
        op = pb_parse(raw)
        if 1 in op:  # RangeResponse: kvs 2
            results.append([decode_kv(kv) for kv in pb_parse(op[1][-1]).get(2, [])])
        elif 3 in op:  # DeleteRangeResponse: deleted 2
            results.append({"response_delete_range": {"deleted": str(_one(pb_parse(op[3][-1]), 2))}})
        else:
            results.append({"response_put": {}})
    return bool(_one(f, 2)), results, revision


# ---------------------------------------------------------------------------- HTTP/2


class _Http2:
    """One HTTP/2 connection to etcd: calls on streams 1, 3, 5...; frames read as they come."""

    def __init__(self, sock: socket.socket, authority: str, scheme: str, timeout: float):
        self.sock, self.authority, self.scheme, self.timeout = sock, authority, scheme, timeout
        self.raw = b""
        self.next_stream = 1
        self.data: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.send_window = 65535  # the connection's; streams: their own, from the server's SETTINGS
        self.stream_windows: dict[int, int] = {}
        self.initial_window = 65535
        self._send(PREFACE + self._frame(SETTINGS, 0, 0, struct.pack(">HI", 4, OUR_WINDOW))
                   + self._frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", OUR_WINDOW - 65535)))

    @staticmethod
    def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise GatewayError(f"etcd: {exc.strerror or exc}") from None

    def _headers(self, path: str) -> bytes:
        """HPACK: :method POST (static 3), :scheme (6 http, 7 https), then literals without
        indexing, names by static index (:authority 1, :path 4, content-type 31, te: new name)."""
        def literal(index: int, value: str) -> bytes:
            encoded = value.encode()
            return _hpack_int(index, 4) + _hpack_int(len(encoded), 7) + encoded

        block = b"\x83" + (b"\x87" if self.scheme == "https" else b"\x86") + literal(4, path)
        block += literal(1, self.authority) + literal(31, "application/grpc")
        block += b"\x00" + _hpack_int(2, 7) + b"te" + _hpack_int(8, 7) + b"trailers"
        return block

    def open(self, path: str) -> int:
        stream = self.next_stream
        self.next_stream += 2
        self.data[stream] = bytearray()
        self.stream_windows[stream] = self.initial_window
        self._send(self._frame(HEADERS, END_HEADERS, stream, self._headers(path)))
        return stream

    def send(self, stream: int, message: bytes, end: bool) -> None:
        payload = b"\x00" + struct.pack(">I", len(message)) + message
        deadline = time.monotonic() + self.timeout
        while payload:
            room = min(MAX_FRAME, self.send_window, self.stream_windows[stream])
            if room <= 0:  # the server's window is full: read until it opens again
                self.read_frame(deadline - time.monotonic())
                continue
            part, payload = payload[:room], payload[room:]
            self.send_window -= len(part)
            self.stream_windows[stream] -= len(part)
            self._send(self._frame(DATA, END_STREAM if end and not payload else 0, stream, part))

    def _fill(self, size: int, timeout: float) -> None:
        while len(self.raw) < size:
            self.sock.settimeout(max(timeout, 0.001))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise GatewayError("etcd closed the connection")
            self.raw += chunk

    def read_frame(self, timeout: float) -> None:
        """Read and handle one frame (socket.timeout when none came in time)."""
        self._fill(9, timeout)
        size = int.from_bytes(self.raw[:3], "big")
        self._fill(9 + size, timeout)
        kind, flags = self.raw[3], self.raw[4]
        stream = int.from_bytes(self.raw[5:9], "big") & 0x7FFFFFFF
        payload, self.raw = self.raw[9:9 + size], self.raw[9 + size:]
        if kind == DATA and stream in self.data:
            if flags & 0x8:  # PADDED
                payload = payload[1:len(payload) - payload[0]]
            self.data[stream] += payload
        elif kind == SETTINGS and not flags & ACK:
            for i in range(0, len(payload) - 5, 6):
                key, value = struct.unpack(">HI", payload[i:i + 6])
                if key == 4:  # SETTINGS_INITIAL_WINDOW_SIZE
                    for s in self.stream_windows:
                        self.stream_windows[s] += value - self.initial_window
                    self.initial_window = value
            self._send(self._frame(SETTINGS, ACK, 0, b""))
        elif kind == PING and not flags & ACK:
            self._send(self._frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            if stream == 0:
                self.send_window += increment
            elif stream in self.stream_windows:
                self.stream_windows[stream] += increment
        elif kind == RST_STREAM:
            self.ended.add(stream)
        elif kind == GOAWAY:
            raise GatewayError("etcd closed the connection (GOAWAY)")
        if kind in (DATA, HEADERS) and flags & END_STREAM:
            self.ended.add(stream)

    def message(self, stream: int) -> bytes | None:
        """The next whole gRPC message received on `stream`, or None."""
        data = self.data[stream]
        if len(data) < 5 or len(data) < 5 + int.from_bytes(data[1:5], "big"):
            return None
        if data[0]:
            raise GatewayError("etcd: a compressed gRPC message")
        size = int.from_bytes(data[1:5], "big")
        message = bytes(data[5:5 + size])
        del data[:5 + size]
        return message


def _hpack_int(n: int, bits: int) -> bytes:
    """An HPACK integer with a `bits`-bit prefix (the flag bits above it zero: a literal without
    indexing, a string without Huffman)."""
    limit = (1 << bits) - 1
    if n < limit:
        return bytes((n,))
    out = bytearray((limit,))
    n -= limit
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    out.append(n)
    return bytes(out)


class GrpcTransport:
    """Gateway's txn/watch/close on etcd's gRPC API (see the module's docstring)."""

    def __init__(self, endpoint: str, timeout: float, cafile: str | None = None, certfile: str | None = None,
                 keyfile: str | None = None):
        self._dialer = Gateway(endpoint, timeout, cafile, certfile, keyfile)  # URLs, TCP, TLS
        self.endpoint, self.timeout = endpoint, timeout
        self._conn: _Http2 | None = None

    def connection(self) -> _Http2:
        if self._conn is None:
            self._conn = self.dial()
        return self._conn

    def dial(self) -> _Http2:
        dialer = self._dialer
        stream = dialer.connect(alpn=("h2",))
        sock = stream.sock
        self.endpoint = dialer.endpoint  # the member that took the connection
        if dialer.scheme == "https" and sock.selected_alpn_protocol() != "h2":
            sock.close()
            raise GatewayError(f"etcd at {self.endpoint} does not speak HTTP/2 over TLS")
        return _Http2(sock, f"{dialer.host}:{dialer.port}", dialer.scheme, self.timeout)

    def call(self, path: str, message: bytes) -> bytes:
        conn = self.connection()
        deadline = time.monotonic() + self.timeout
        try:
            stream = conn.open(path)
            conn.send(stream, message, end=True)
            while True:
                answer = conn.message(stream)
                if answer is not None:
                    return answer
                if stream in conn.ended:
                    raise GatewayError(f"etcd at {self.endpoint} refused {path} (gRPC error)")
                conn.read_frame(deadline - time.monotonic())
        except (socket.timeout, TimeoutError):
            self.close()
            raise GatewayError(f"etcd request timed out at {self.endpoint}") from None
        except OSError as exc:
            self.close()
            raise GatewayError(f"etcd at {self.endpoint}: {exc.strerror or exc}") from None

    def txn(self, compare: list[dict], success: list[dict]) -> tuple[bool, list, int]:
        request = b"".join(pb_bytes(1, encode_compare(c)) for c in compare)
        request += b"".join(pb_bytes(2, encode_op(op)) for op in success)
        return decode_txn(self.call(TXN_PATH, request))

    def watch(self, prefixes: list[str], start_revision: int) -> "GrpcWatch":
        return GrpcWatch(self, prefixes, start_revision)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.sock.close()
            except OSError:
                pass
            self._conn = None


class GrpcWatch:
    """gateway.Watch on Watch.Watch: one more stream on the transport's connection (HTTP/2
    carries the calls beside it: no second TLS handshake), one WatchCreateRequest (key 1,
    range_end 2, start_revision 3) per prefix."""

    def __init__(self, transport: GrpcTransport, prefixes: list[str], start_revision: int):
        from fleetd.registry.gateway import prefix_end

        self.conn = transport.connection()
        self.stream = self.conn.open(WATCH_PATH)
        for prefix in prefixes:
            raw = prefix.encode()
            create = pb_bytes(1, raw) + pb_bytes(2, prefix_end(raw)) + pb_int(3, start_revision)
            self.conn.send(self.stream, pb_bytes(1, create), end=False)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        try:
            while True:
                message = self.conn.message(self.stream)
                if message is not None:
                    answer = pb_parse(message)  # WatchResponse: canceled 4, compact_revision 5, events 11
                    if _one(answer, 4) or _one(answer, 5):
                        raise GatewayError("etcd ended the watch")
                    if answer.get(11):
                        return True
                    continue
                if self.stream in self.conn.ended:
                    raise GatewayError("etcd ended the watch")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.conn.read_frame(remaining)
        except (socket.timeout, TimeoutError):
            return False
        except OSError as exc:
            raise GatewayError(f"etcd watch: {exc.strerror or exc}") from None

    def close(self) -> None:
        """Leave the stream: the connection is the transport's (closed with it)."""
        self.conn.data.pop(self.stream, None)
