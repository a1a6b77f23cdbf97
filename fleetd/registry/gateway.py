"""The registry's unit records over etcd's JSON gateway, on the standard library alone.

For fleetctl's etcd fast path (fleetctl/fast_etcd.py): `fleetctl --driver=etcd start x.service`
through the registry proper imports aetcd, gRPC, protobuf and asyncio (~0.3 s of a 0.3-0.5 s
process) for a few milliseconds of etcd. etcd 3.4 also serves its v3 API as JSON over HTTP/1.1
on every client URL (grpc-gateway: POST /v3/kv/range, /v3/kv/txn and the streamed /v3/watch;
keys and values base64), which the standard library's socket, ssl and json speak in a few
hundred lines. It is hand-written because what is on offer costs more than the whole command:
the gateway's Python clients are built on requests (etcd3-py also on pyOpenSSL and
cryptography, with aiohttp for its async client; etcd3gw on pbr and six) — requests alone
imports more than this fast path does in all.

It does only what the fast path needs, with the registry's own layout (fleetd/registry/keys.py)
and value encodings (fleetd/registry/records.py), and the same keys, values, compares and
transaction batches as the stores: `create_units` and `set_desired_state` and `destroy_units`
as fleetd/registry/units.py's EtcdUnitStore (the latter through RegistryCore.cas_update),
`read_units` + `placements` as EtcdClusterViews.unit_records, `machines` as list_machines, and
`watch` as RegistryCore.watch. tests/etcd/test_fleetctl_fast_etcd.py holds the fast path to the
full CLI's etcd driver on real etcd.

Errors: `GatewayError` for anything that is not the gateway's plain answer (no gateway, an HTTP
error, etcd refusing a certificate's CN through the gateway when auth is enabled, a timeout):
a caller that has written nothing yet leaves the command to the registry proper. The stores'
own refusals are the registry's (UnitNotFound, UnitConflict) with the same messages.
"""

from __future__ import annotations

import base64
import json
import socket

from fleetd.errors import RegistryError, UnitConflict, UnitNotFound
from fleetd.registry.keys import KeyLayout
from fleetd.registry.records import CAS_ATTEMPTS, MAX_TXN_OPS, job_value

WATCH_PATH = "/v3/watch"


class GatewayError(RegistryError):
    """etcd's gateway did not answer as expected (status 0: no HTTP answer at all)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text or "")


def prefix_end(prefix: bytes) -> bytes:
    """The end of the range of keys starting with `prefix`, as the registry proper asks for it
    (aetcd.utils.prefix_range_end)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            break
    return bytes(end)


def chunks(items: list, size: int = MAX_TXN_OPS) -> list[list]:
    return [items[start:start + size] for start in range(0, len(items), size)]


_URL = None


def parse_endpoint(endpoint: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a plain etcd client URL — http(s)://host[:port][/], a host name or
    an IP address (IPv6 in brackets) — as fleetd.registry.connection reads it; None for anything
    else (urllib.parse alone costs more than a request here)."""
    global _URL
    if _URL is None:
        import re

        _URL = re.compile(r"(?:(https?)://)?([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?/?")
    match = _URL.fullmatch(endpoint)
    if match is None:
        return None
    scheme, host, port = match.groups()
    if port is not None and not 0 < int(port) < 65536:
        return None
    return scheme or "http", host.strip("[]").lower(), int(port) if port else 2379


# ---------------------------------------------------------------------------- HTTP/1.1


class _Stream:
    """One connection: requests written whole, answers read with a deadline per read."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.raw = b""

    def fill(self, timeout: float) -> None:
        self.sock.settimeout(max(timeout, 0.001))
        data = self.sock.recv(65536)
        if not data:
            raise GatewayError("etcd closed the connection")
        self.raw += data

    def line(self, timeout: float) -> bytes:
        while b"\r\n" not in self.raw:
            if len(self.raw) > 65536:
                raise GatewayError("not an HTTP answer")
            self.fill(timeout)
        line, _, self.raw = self.raw.partition(b"\r\n")
        return line

    def exact(self, size: int, timeout: float) -> bytes:
        while len(self.raw) < size:
            self.fill(timeout)
        data, self.raw = self.raw[:size], self.raw[size:]
        return data

    def head(self, timeout: float) -> tuple[int, dict[str, str]]:
        """Status and headers, consumed only once all have come (a timeout leaves them unread)."""
        while b"\r\n\r\n" not in self.raw:
            if len(self.raw) > 65536:
                raise GatewayError("not an HTTP answer")
            self.fill(timeout)
        head, _, self.raw = self.raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = lines[0].split(None, 2)
        if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1].isdigit():
            raise GatewayError("not an HTTP answer")
        headers = {}
        for line in lines[1:]:
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        return int(status[1]), headers

    def chunk(self, timeout: float) -> bytes | None:
        """The next chunk of a chunked body (None: the last one), consumed only once it has
        come whole (a timeout leaves it unread)."""
        while True:
            end = self.raw.find(b"\r\n")
            if end >= 0:
                try:
                    size = int(self.raw[:end].split(b";")[0].strip(), 16)
                except ValueError:
                    raise GatewayError("not an HTTP answer") from None
                if not size:
                    self.raw = self.raw[end + 2:]
                    return None  # the trailer (to an empty line) is the caller's
                if len(self.raw) >= end + 2 + size + 2:
                    data = self.raw[end + 2:end + 2 + size]
                    self.raw = self.raw[end + 2 + size + 2:]
                    return data
            elif len(self.raw) > 64:
                raise GatewayError("not an HTTP answer")
            self.fill(timeout)

    def body(self, headers: dict[str, str], timeout: float) -> bytes:
        if "chunked" in headers.get("transfer-encoding", ""):
            parts = []
            while (part := self.chunk(timeout)) is not None:
                parts.append(part)
            while self.line(timeout):  # trailer fields, to the empty line
                pass
            return b"".join(parts)
        length = headers.get("content-length", "")
        if not length.isdigit():
            raise GatewayError("an answer without a length")
        return self.exact(int(length), timeout)


class Gateway:
    """etcd's JSON gateway at its client URLs (http, or https with the standard library's ssl):
    `endpoints` one URL or several, comma-separated; a connection goes to the first that takes
    it (as a gRPC channel picks the first address that answers), which is then kept first."""

    def __init__(self, endpoints: str, timeout: float, cafile: str | None = None, certfile: str | None = None,
                 keyfile: str | None = None):
        self.places = []
        for endpoint in (e.strip() for e in endpoints.split(",") if e.strip()):
            where = parse_endpoint(endpoint)
            if where is None:
                raise GatewayError(f"not an etcd client URL: {endpoint}")
            self.places.append((endpoint, where))
        if not self.places:
            raise GatewayError("no etcd endpoint")
        self._use(self.places[0])
        self.timeout = timeout
        self.tls_files = (cafile, certfile, keyfile)
        self._stream: _Stream | None = None

    def _use(self, place: tuple[str, tuple[str, str, int]]) -> None:
        self.endpoint, (self.scheme, self.host, self.port) = place

    def connect(self, alpn: tuple[str, ...] = ()) -> _Stream:
        failures = []
        for _ in range(len(self.places)):
            try:
                return self._connect(alpn)
            except GatewayError as exc:
                failures.append(exc)
                self.places.append(self.places.pop(0))  # the next one first
                self._use(self.places[0])
        raise failures[0]

    def _connect(self, alpn: tuple[str, ...]) -> _Stream:
        try:
            host = self.host.encode() if self.host.isascii() else self.host  # str: the idna codec's import
            sock = socket.create_connection((host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise GatewayError(f"etcd unreachable at {self.endpoint}: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.scheme == "https":
            import ssl

            cafile, certfile, keyfile = self.tls_files
            try:
                context = ssl.create_default_context(cafile=cafile or None)
                if certfile:
                    context.load_cert_chain(certfile, keyfile or None)
                if alpn:
                    context.set_alpn_protocols(list(alpn))
                sock = context.wrap_socket(sock, server_hostname=host)  # bytes: no idna codec either
            except (OSError, ValueError) as exc:
                sock.close()
                raise GatewayError(f"TLS to etcd at {self.endpoint}: {exc}") from None
        return _Stream(sock)

    def request(self, stream: _Stream, path: str, body: bytes) -> None:
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        try:
            stream.sock.sendall(head.encode("latin-1") + body)
        except OSError as exc:
            raise GatewayError(f"etcd at {self.endpoint}: {exc.strerror or exc}") from None

    def call(self, path: str, message: dict) -> dict:
        """One unary call (POST path, JSON in and out) on the kept-alive connection."""
        if self._stream is None:
            self._stream = self.connect()
        stream = self._stream
        self.request(stream, path, json.dumps(message, separators=(",", ":")).encode())
        try:
            status, headers = stream.head(self.timeout)
            raw = stream.body(headers, self.timeout)
        except OSError as exc:  # a timeout included
            self.close()
            raise GatewayError(f"etcd at {self.endpoint}: {exc.strerror or exc or 'no answer in time'}") from None
        except GatewayError:
            self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        if status != 200 or "json" not in headers.get("content-type", ""):
            raise GatewayError(f"etcd gateway {path}: {status} {raw[:200].decode('utf-8', 'replace').strip()}",
                               status)
        try:
            answer = json.loads(raw)
        except ValueError:
            raise GatewayError(f"etcd gateway {path}: not JSON") from None
        if not isinstance(answer, dict) or "header" not in answer:
            raise GatewayError(f"etcd gateway {path}: an answer without a header")
        return answer

    def watch(self, prefixes: list[str], start_revision: int) -> "Watch":
        return Watch(self, prefixes, start_revision)

    def close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.sock.close()
            except OSError:
                pass
            self._stream = None

    # ------------------------------------------------------------------ the KV API

    def txn(self, compare: list[dict], success: list[dict]) -> tuple[bool, list, int]:
        """(succeeded, per operation: a range's kvs (list of dicts) or the response op, revision)."""
        answer = self.call("/v3/kv/txn", {"compare": compare, "success": success})
        results = []
        for item in answer.get("responses") or []:
            if "response_range" in item:
                results.append(item["response_range"].get("kvs") or [])
            else:
                results.append(item)
        return bool(answer.get("succeeded")), results, int(answer["header"].get("revision") or 0)


def op_get(key: str, prefix: bool = False) -> dict:
    raw = key.encode()
    request = {"key": b64(raw)}
    if prefix:
        request["range_end"] = b64(prefix_end(raw))
    return {"request_range": request}


def op_put(key: str, value: bytes | str) -> dict:
    return {"request_put": {"key": b64(key), "value": b64(value)}}


def op_delete(key: str) -> dict:
    return {"request_delete_range": {"key": b64(key)}}


def absent(key: str) -> dict:
    """Compare: the key does not exist (its create revision is 0)."""
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def unchanged(key: str, mod_revision: int) -> dict:
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}


def value_of(kv: dict) -> bytes:
    return unb64(kv.get("value", ""))


# ---------------------------------------------------------------------------- unit records


class Watch:
    """A streamed /v3/watch of key prefixes on a connection of its own: `wait(timeout)` is True
    once etcd reported a change (RegistryCore.watch's events), False when the time is up.
    A watch etcd cancels or compacts away raises GatewayError."""

    def __init__(self, gateway: Gateway, prefixes: list[str], start_revision: int):
        self.gateway = gateway
        body = "".join(json.dumps({"create_request": {
            "key": b64(p), "range_end": b64(prefix_end(p.encode())), "start_revision": str(start_revision)}})
            for p in prefixes).encode()
        self.stream = gateway.connect()
        gateway.request(self.stream, WATCH_PATH, body)
        self.lines = b""
        self.headers: dict[str, str] | None = None

    def _message(self, timeout: float) -> dict:
        while b"\n" not in self.lines:
            if self.headers is None:
                status, self.headers = self.stream.head(timeout)
                if status != 200 or "chunked" not in self.headers.get("transfer-encoding", ""):
                    raise GatewayError(f"etcd gateway {WATCH_PATH}: {status}", status)
                continue
            part = self.stream.chunk(timeout)
            if part is None:
                raise GatewayError("etcd ended the watch")
            self.lines += part
        line, _, self.lines = self.lines.partition(b"\n")
        try:
            message = json.loads(line)
        except ValueError:
            raise GatewayError("etcd gateway watch: not JSON") from None
        result = message.get("result") if isinstance(message, dict) else None
        if not isinstance(result, dict) or result.get("canceled") or result.get("compact_revision"):
            raise GatewayError(f"etcd ended the watch: {line[:200].decode('utf-8', 'replace')}")
        return result

    def wait(self, timeout: float) -> bool:
        import time

        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if self._message(remaining).get("events"):
                    return True
        except (socket.timeout, TimeoutError):
            return False
        except OSError as exc:
            raise GatewayError(f"etcd watch: {exc.strerror or exc}") from None

    def close(self) -> None:
        try:
            self.stream.sock.close()
        except OSError:
            pass


class UnitGateway:
    """What fleetctl's fast path does to unit records, over a Gateway (see the module's
    docstring): reads, creation, desired states, deletion, a watch."""

    def __init__(self, gateway, key_prefix: str):
        self.gateway = gateway  # a Gateway, or grpc_lite.GrpcTransport (the same txn/watch/close)
        self.keys = KeyLayout(key_prefix)

    def read_units(self, names: list[str], machines: bool = False) -> tuple[int, dict[str, dict], dict[str, list[dict]],
                                                                           dict[str, tuple[str, str]] | None]:
        """(revision of the first read, job records by name — decoded, with "mod_revision" —,
        the states published for each found unit sorted by machine) as unit_records reads them;
        with `machines`, also `machines()` read in the same first transaction (else None)."""
        keys = self.keys
        jobs: dict[str, dict] = {}
        states: dict[str, list[dict]] = {}
        first = 0
        found_machines = None
        for chunk in chunks(list(dict.fromkeys(names)), MAX_TXN_OPS // 2) or [[]]:
            ops = []
            for name in chunk:
                ops += [op_get(keys.job(name)), op_get(keys.unit_states(name), prefix=True)]
            if machines and not first:
                ops.append(op_get(keys.machines, prefix=True))
            if not ops:
                break
            _, responses, revision = self.gateway.txn([], ops)
            if machines and not first:
                found_machines = self._machines_from(responses.pop())
            first = first or revision
            for i, name in enumerate(chunk):
                job, reported = responses[2 * i], responses[2 * i + 1]
                if job:
                    record = json.loads(value_of(job[0]))
                    record["mod_revision"] = int(job[0].get("mod_revision") or 0)
                    jobs[name] = record
                    states[name] = sorted((json.loads(value_of(kv)) for kv in reported),
                                          key=lambda s: s["machineID"])
        return first, jobs, states, found_machines

    def bodies(self, hashes: list[str]) -> dict[str, bytes]:
        """Unit bodies (their canonical text) by hash; missing ones left out."""
        found = {}
        for chunk in chunks(sorted(set(hashes))):
            _, responses, _ = self.gateway.txn([], [op_get(self.keys.body(h)) for h in chunk])
            for unit_hash, kvs in zip(chunk, responses):
                if kvs:
                    found[unit_hash] = value_of(kvs[0])
        return found

    def placements(self, pairs: list[tuple[str, str]]) -> dict[str, tuple[str, dict]]:
        """(machine, placement record) of units on the given (name, machine) pairs
        (EtcdScheduleStore.placements_on)."""
        pairs = list(dict.fromkeys(pairs))
        found: dict[str, tuple[str, dict]] = {}
        for chunk in chunks(pairs):
            _, responses, _ = self.gateway.txn([], [op_get(self.keys.placement(mid, n)) for n, mid in chunk])
            for (name, mid), kvs in zip(chunk, responses):
                if kvs:
                    found[name] = (mid, json.loads(value_of(kvs[0])))
        return found

    def machines(self) -> dict[str, tuple[str, str]]:
        """(id, public IP) of each machine's record by machine (machines_from's `object` keys)."""
        _, (kvs,), _ = self.gateway.txn([], [op_get(self.keys.machines, prefix=True)])
        return self._machines_from(kvs)

    def _machines_from(self, kvs: list[dict]) -> dict[str, tuple[str, str]]:
        base = self.keys.machines
        found = {}
        for kv in kvs:
            machine_id, _, tail = unb64(kv["key"]).decode()[len(base):].partition("/")
            if tail == "object":
                data = json.loads(value_of(kv))
                found[machine_id] = (data["id"], data.get("publicIP", ""))
        return dict(sorted(found.items()))

    def create_units(self, units: list[tuple[str, str, str]]) -> dict[str, tuple[str, int]]:
        """EtcdUnitStore.create_units of (name, hash, canonical text) units, desired inactive:
        {name: (hash, mod revision of its job key)} of those created (a unit created meanwhile
        by someone else is left as it is)."""
        keys = self.keys
        created: dict[str, tuple[str, int]] = {}
        for chunk in chunks(units, MAX_TXN_OPS // 2):
            bodies = {h: text for _, h, text in chunk}
            success = [op_put(keys.body(h), text) for h, text in bodies.items()]
            success += [op_put(keys.job(n), job_value(n, h, "inactive")) for n, h, _ in chunk]
            ok, _, revision = self.gateway.txn([absent(keys.job(n)) for n, _, _ in chunk], success)
            if ok:
                created.update((n, (h, revision)) for n, h, _ in chunk)
                continue
            for name, unit_hash, text in chunk:  # someone else created some of them
                ok, _, revision = self.gateway.txn([absent(keys.job(name))], [
                    op_put(keys.body(unit_hash), text), op_put(keys.job(name), job_value(name, unit_hash, "inactive"))])
                if ok:
                    created[name] = (unit_hash, revision)
        if created and len(units) >= MAX_TXN_OPS // 2:  # the submission's end, as EtcdUnitStore marks it
            self.gateway.txn([], [op_put(keys.submitted, str(len(created)))])
        return created

    def set_desired_state(self, names: list[str], state: str, created: dict[str, tuple[str, int]] | None = None) -> None:
        """EtcdUnitStore.set_desired_state (RegistryCore.cas_update) for units that are not
        templates (the caller's): UnitNotFound, UnitConflict as there. `created`: what
        `create_units` answered for units this client has just created: the first round compares
        with those records instead of reading them again (the same writes and compares; a key
        changed since fails its compare and is read again, as after any lost race)."""
        keys = self.keys
        by_key = {keys.job(n): n for n in dict.fromkeys(names)}
        pending = list(by_key)
        given = {keys.job(n): {"value": b64(job_value(n, h, "inactive")), "mod_revision": str(r)}
                 for n, (h, r) in (created or {}).items()}
        written: set[str] = set()
        for _ in range(CAS_ATTEMPTS):
            if not pending:
                break
            current = {k: given[k] for k in pending if k in given}
            given = {}
            unknown = [k for k in pending if k not in current]
            if len(unknown) == 1:
                _, (kvs,), _ = self.gateway.txn([], [op_get(unknown[0])])
                current[unknown[0]] = kvs[0] if kvs else None
            else:
                for batch in chunks(unknown):
                    _, responses, _ = self.gateway.txn([], [op_get(k) for k in batch])
                    current.update((k, kvs[0] if kvs else None) for k, kvs in zip(batch, responses))
            planned = {}
            for key in pending:  # all keys first: a refusal stops before any write
                kv = current[key]
                if kv is None:
                    raise UnitNotFound(f"unit {by_key[key]} not found")
                data = json.loads(value_of(kv))
                name, unit_hash, old = data["name"], data["hash"], data["desiredState"]
                planned[key] = None if old == state else [op_put(key, job_value(name, unit_hash, state))]
            retry = []
            for batch in chunks(pending, MAX_TXN_OPS // 2):
                compare, success = [], []
                for key in batch:
                    if planned[key] is None:
                        continue
                    compare.append(unchanged(key, int(current[key].get("mod_revision") or 0)))
                    success += planned[key]
                if not success:
                    continue
                ok, _, _ = self.gateway.txn(compare, success)
                if not ok:
                    retry += batch
                else:
                    written.update(k for k in batch if planned[k] is not None)
            pending = retry
        if pending:
            raise UnitConflict(f"units {', '.join(by_key[k] for k in pending)}: too many concurrent updates")
        if written and len(by_key) >= MAX_TXN_OPS // 2:  # the submission's end, as EtcdUnitStore marks it
            self.gateway.txn([], [op_put(keys.submitted, str(len(written)))])

    def destroy_units(self, names: list[str]) -> list[str]:
        """EtcdUnitStore.destroy_units: the names that existed, their job keys deleted."""
        destroyed = []
        for chunk in chunks(list(dict.fromkeys(names))):
            _, responses, _ = self.gateway.txn([], [op_delete(self.keys.job(n)) for n in chunk])
            for name, response in zip(chunk, responses):
                if int((response.get("response_delete_range") or {}).get("deleted") or 0):
                    destroyed.append(name)
        return destroyed

    def watch_units(self, start_revision: int) -> Watch:
        """A watch of what a unit's state is made of (fleetctl's etcd change feed: the jobs,
        the schedule and the published states) from `start_revision` on."""
        keys = self.keys
        return self.gateway.watch([keys.jobs, keys.schedule, keys.states], start_revision)

    def close(self) -> None:
        self.gateway.close()
