"""The fast paths' HTTP (fleetctl/fast.py, fleetctl/fast_units.py): the global flags they
understand, where the API is (a unix socket, http:// or https://: fleetctl/fast_conn.py), HTTP/1.0 requests on the standard
library's socket (several at once on their own connections, as the full CLI's API driver sends
batches on 16 threads), and the API driver's error messages (fleetctl/api_client.py)."""

from __future__ import annotations

import time

from fleetctl import lean
from fleetctl.fast_conn import NotFast, connect  # noqa: F401 - both used here and imported from here

API_PREFIX = "/fleet/v1"
DEFAULT_ENDPOINT = "unix:///var/run/fleet.sock"
UNIX_HOST = "domain-sock"  # fleetctl's Host header over a unix socket (fleetctl.endpoint)
WATCH_PATH = API_PREFIX + "/_watch/units"
PARALLEL_REQUESTS = 64  # requests of a batch in flight at once (the full CLI: 16 threads, one each)
LONG_POLL = 30.0  # seconds a change-feed request may be held by the server
QUERY_LIMIT = 4000  # characters of unitName query per request (aiohttp's request line: 8,190)

# global flags with a value that the fast path understands; an empty --tunnel is no tunnel
GLOBAL_VALUES = {"--endpoint", "--driver", "--request-timeout", "--etcd-key-prefix", "--ca-file", "--cert-file",
                 "--key-file", "--etcd-cafile", "--etcd-certfile", "--etcd-keyfile", "--ssh-username",
                 "--ssh-timeout", "--known-hosts-file", "--strict-host-key-checking", "--tunnel"}
# FLEETCTL_* variables that cannot change a plain listing's answer (TLS files apply to https://)
HARMLESS_ENV = {"FLEETCTL_ENDPOINT", "FLEETCTL_DRIVER", "FLEETCTL_REQUEST_TIMEOUT", "FLEETCTL_ETCD_KEY_PREFIX",
                "FLEETCTL_CA_FILE", "FLEETCTL_CERT_FILE", "FLEETCTL_KEY_FILE", "FLEETCTL_SSH_USERNAME",
                "FLEETCTL_SSH_TIMEOUT", "FLEETCTL_STRICT_HOST_KEY_CHECKING", "FLEETCTL_KNOWN_HOSTS_FILE"}


class Unreachable(Exception):
    """The API did not answer (the full CLI's one-line error, without waiting a second time)."""


def global_options(argv: list[str], environ) -> tuple[dict, list[str]] | None:
    """The global flags and environment the fast paths understand, and the rest of the command
    line (the command and its arguments); None when they are the full CLI's."""
    env = {k: v for k, v in environ.items() if k.startswith("FLEETCTL_")}
    if set(env) - HARMLESS_ENV or env.get("FLEETCTL_TUNNEL"):
        return None
    opts = {"endpoint": env.get("FLEETCTL_ENDPOINT", DEFAULT_ENDPOINT), "driver": env.get("FLEETCTL_DRIVER", ""),
            "timeout": env.get("FLEETCTL_REQUEST_TIMEOUT", "3.0"), "fields": None, "full": False,
            "no_legend": False, "output": "table"}
    # TLS files for an https:// API, as the full CLI takes them: --ca-file (or FLEETCTL_CA_FILE,
    # click's envvar: empty is unset) before the hidden --etcd-cafile
    tls = {name: env.get(f"FLEETCTL_{name.upper()}_FILE") or None for name in ("ca", "cert", "key")}
    old_tls: dict[str, str] = {}
    args = list(argv)
    while args and args[0].startswith("-"):  # global flags, before the command
        flag, eq, value = args.pop(0).partition("=")
        if flag not in GLOBAL_VALUES:
            return None
        if not eq:
            if not args:
                return None
            value = args.pop(0)
        if flag == "--tunnel" and value:
            return None
        if flag in ("--endpoint", "--driver"):
            opts[flag[2:]] = value
        elif flag == "--request-timeout":
            opts["timeout"] = value
        elif flag in ("--ca-file", "--cert-file", "--key-file"):
            tls[flag[2:-5]] = value
        elif flag in ("--etcd-cafile", "--etcd-certfile", "--etcd-keyfile"):
            old_tls[flag[7:-4]] = value
    for name in ("ca", "cert", "key"):
        opts[f"{name}_file"] = tls[name] or old_tls.get(name) or None
    return opts, args


def locate(opts: dict) -> dict | None:
    """`opts` with where the API is (a unix socket, http or https), or None (the full CLI's)."""
    try:
        opts["timeout"] = float(opts["timeout"])
    except ValueError:
        return None
    endpoint = opts["endpoint"].strip()
    driver = opts["driver"].lower()
    if "," in endpoint or (driver and driver != "api"):
        return None
    if endpoint.startswith("unix://") and endpoint[7:].startswith("/"):
        opts["unix"], opts["display"] = endpoint[7:], endpoint
    elif endpoint.startswith("/"):
        opts["unix"], opts["display"] = endpoint, "unix://" + endpoint
    elif "://" not in endpoint or endpoint.startswith(("http://", "https://")):
        display = endpoint if "://" in endpoint else "http://" + endpoint
        opts["tls"] = display.startswith("https://")
        try:
            url = lean.split_url(display)  # urlsplit's answer (urllib.parse imports re)
            if url is None:
                from urllib.parse import urlsplit

                std = urlsplit(display)
                if std.username:
                    return None
                url = (std.scheme, std.netloc, std.path, std.query, std.fragment, std.hostname, std.port)
            _, netloc, path, query, fragment, hostname, port = url
            port = port or (443 if opts["tls"] else 80)
        except ValueError:
            return None
        if not hostname or query or fragment or (not driver and port in (2379, 4001)):
            return None
        opts["tcp"] = (hostname, port)
        opts["host"], opts["prefix"], opts["display"] = netloc, path.rstrip("/"), display
    else:
        return None
    return opts


def request_bytes(opts: dict, method: str, path: str, body: bytes | None = None, headers: tuple[str, ...] = ()) -> bytes:
    """An HTTP/1.0 request (the server closes the connection after its answer)."""
    lines = [f"{method} {opts.get('prefix', '')}{path} HTTP/1.0", f"Host: {opts.get('host', UNIX_HOST)}",
             "User-Agent: fleetctl-py", "Accept: application/json", *headers]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def read_response(sock) -> tuple[int, dict, bytes]:
    """(status, headers in lower case, body) of an answer read to EOF; NotFast for an answer
    that is not plain HTTP (a chunked body is decoded)."""
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    head, sep, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:]))
    if not sep or len(status) < 2 or not status[1].isdigit():
        raise NotFast()
    if "chunked" in headers.get("transfer-encoding", ""):
        body = _unchunk(body)
    elif headers.get("content-length", str(len(body))) != str(len(body)):
        raise NotFast()
    return int(status[1]), headers, body


def _unchunk(data: bytes) -> bytes:
    out = []
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            raise NotFast() from None
        if not sep or len(data) < size + 2:
            raise NotFast()
        if size == 0:
            return b"".join(out)
        out.append(data[:size])
        data = data[size + 2:]


# ---------------------------------------------------------------------------- HTTP


class Failed(Exception):
    """After the first write: print this line on stderr and exit 1 (the full CLI's error)."""


def quote_name(name: str, safe: str = "@:") -> str:
    return lean.quote(name, safe=safe)


def name_chunks(names: list[str], limit: int = QUERY_LIMIT) -> list[list[str]]:
    """`names` in groups whose unitName query stays within `limit` characters (the server's
    request line is limited)."""
    chunks: list[list[str]] = []
    size = limit
    for name in names:
        cost = len(quote_name(name, safe="")) + len("&unitName=")
        if size + cost > limit:
            chunks.append([])
            size = 0
        chunks[-1].append(name)
        size += cost
    return chunks


def until_next_check(feed, since: int | None, deadline: float | None, delays) -> tuple[bool, int | None]:
    """One wait between two checks of a blocking command (fleetctl/api_client.py's `wait` and the
    fast path's): (False, since) once `deadline` (time.monotonic) has passed; otherwise (True, the
    next revision) after a long poll of the change feed, `feed(since, hold)` -> revision or None
    when the server has none, or after the next of `delays` without a feed."""
    remaining = None if deadline is None else deadline - time.monotonic()
    if remaining is not None and remaining <= 0:
        return False, since
    if since is not None:
        hold = LONG_POLL if remaining is None else min(LONG_POLL, remaining)
        since = feed(since, hold)
        if since is not None:
            return True, since
    delay = next(delays)
    time.sleep(delay if remaining is None else min(delay, remaining))
    return True, since


def error_message(raw: bytes) -> str:
    """The message of fleet's error envelope {"error": {"message": ...}}, else the body's start
    (shared with fleetctl/api_client.py)."""
    try:
        return lean.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return raw.decode("utf-8", "replace").strip()[:200]


def unreachable_reason(exc: BaseException, wait: float) -> str:
    """Why the API did not answer, in a few words (shared with fleetctl/api_client.py)."""
    if isinstance(exc, TimeoutError):  # socket.timeout
        return f"no answer within {wait:g}s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class Api:
    def __init__(self, opts: dict):
        self.opts = opts

    def unreachable(self, exc: BaseException, wait: float) -> Failed:
        return Failed(f"Error: fleet API unreachable at {self.opts['display']}: {unreachable_reason(exc, wait)}")

    def many(self, requests: list[tuple], timeout: float | None = None) -> list:
        """(status, body) of each (method, path, body, headers) request, sent together on up to
        PARALLEL_REQUESTS connections; an exception (Failed) in place of an answer that failed."""
        wait = self.opts["timeout"] if timeout is None else timeout
        answers: list = []
        for start in range(0, len(requests), PARALLEL_REQUESTS):
            socks = []
            batch = requests[start:start + PARALLEL_REQUESTS]
            for _ in batch:  # connected first, sent together: the server sees the requests at
                try:         # once (concurrent creates share its transactions)
                    socks.append(connect(self.opts, wait))
                except OSError as exc:
                    socks.append(self.unreachable(exc, wait))
            for i, (method, path, body, headers) in enumerate(batch):
                if isinstance(socks[i], Exception):
                    continue
                try:
                    socks[i].sendall(request_bytes(self.opts, method, path, body, headers))
                except OSError as exc:
                    socks[i].close()
                    socks[i] = self.unreachable(exc, wait)
            for sock in socks:
                if isinstance(sock, Exception):
                    answers.append(sock)
                    continue
                try:
                    with sock:
                        status, _, raw = read_response(sock)
                    answers.append((status, raw))
                except OSError as exc:
                    answers.append(self.unreachable(exc, wait))
                except NotFast:
                    answers.append(Failed("Error: fleet API unreachable at "
                                          f"{self.opts['display']}: Remote end closed connection without response"))
        return answers

    def one(self, method: str, path: str, body: bytes | None = None, headers: tuple = (),
            timeout: float | None = None) -> tuple[int, bytes]:
        answer = self.many([(method, path, body, headers)], timeout)[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def error(self, method: str, path: str, status: int, raw: bytes) -> Failed:
        """fleetctl.api_client.ApiFleetClient.error, as `run` prints it."""
        message = error_message(raw)
        path = self.opts.get("prefix", "") + path.split("?", 1)[0]
        if status == 503:
            return Failed(f"Error: {message or 'service unavailable'} (fleet API at {self.opts['display']})")
        if status == 404:
            return Failed(f"Error: {message or f'{path} not found'}")
        if status == 409:
            return Failed(f"Error: {message or 'conflict'}")
        if status == 400:
            return Failed(f"Error: {message or 'bad request'}")
        return Failed(f"Error: fleet API {method} {path}: {status} {message}".rstrip())

    def pages(self, resource: str, key: str, params: list[tuple[str, str]] = ()) -> list[dict]:
        """Every item of a paged collection (api_client._pages)."""
        items: list[dict] = []
        query = list(params)
        while True:
            path = f"{API_PREFIX}/{resource}" + ("?" + lean.urlencode(query) if query else "")
            status, raw = self.one("GET", path)
            if status not in (200, 201, 204):
                raise self.error("GET", path, status, raw)
            page = (lean.loads(raw) if raw.strip() else None) or {}
            items.extend(page.get(key) or [])
            token = page.get("nextPageToken") or ""
            if not token:
                return items
            query = [*params, ("nextPageToken", token)]

    def units_and_machines(self, names: list[str]) -> tuple[dict[str, dict], list[dict]]:
        """`units_named(names)` and the machines' list, asked at the same time (a wait's first
        check: its legends need the machines, and one round trip less is 5-20 ms here)."""
        wanted = list(dict.fromkeys(names))
        chunks = name_chunks(wanted)
        if len(chunks) == 1:
            paths = [f"{API_PREFIX}/units?" + lean.urlencode([("unitName", n) for n in wanted]), f"{API_PREFIX}/machines"]
            pages = []
            for path, answer in zip(paths, self.many([("GET", p, None, ()) for p in paths])):
                if isinstance(answer, Exception):
                    raise answer
                if answer[0] not in (200, 201, 204):
                    raise self.error("GET", path, *answer)
                pages.append((lean.loads(answer[1]) if answer[1].strip() else None) or {})
            if not any(page.get("nextPageToken") for page in pages):
                found = {u["name"]: u for u in pages[0].get("units") or [] if u.get("name") in wanted}
                return {n: found[n] for n in wanted if n in found}, pages[1].get("machines") or []
        return self.units_named(wanted), self.pages("machines", "machines")

    def units_named(self, names: list[str]) -> dict[str, dict]:
        """The named units that exist, by name: api_client.units_named's GET /units?unitName=..."""
        wanted = list(dict.fromkeys(names))
        found = {}
        for chunk in name_chunks(wanted):
            chosen = set(chunk)
            found.update((u["name"], u) for u in self.pages("units", "units", [("unitName", n) for n in chunk])
                         if u.get("name") in chosen)
        return {n: found[n] for n in wanted if n in found}

    def feed(self, names: list[str], since: int | None = None, hold: float = 0.0,
             units: bool = False) -> tuple[int | None, dict[str, dict] | None]:
        """api_client.ApiFleetClient.feed_revision: the change feed's revision (None: the server
        has none) and, asked with `units`, the named units it read after that revision, by name
        (None: not answered, e.g. by an older server or without a change: read them yourself)."""
        path = self.feed_path(names, since, hold, units)
        status, raw = self.one("GET", path, timeout=hold + self.opts["timeout"])
        return self.feed_answer(path, status, raw, names)

    @staticmethod
    def feed_path(names: list[str], since: int | None, hold: float, units: bool) -> str:
        params = [("unitName", n) for n in names]
        if since is not None:
            params += [("since", str(since)), ("timeout", f"{hold:g}")]
        if units and names:
            params.append(("units", "true"))
            if since is not None:  # a wait that a state report completes (docs/api.md)
                params.append(("wake", "states"))
        return WATCH_PATH + ("?" + lean.urlencode(params) if params else "")

    def feed_answer(self, path: str, status: int, raw: bytes,
                    names: list[str]) -> tuple[int | None, dict[str, dict] | None]:
        if status in (404, 405, 501):
            return None, None
        if status != 200:
            raise self.error("GET", path, status, raw)
        try:
            answer = lean.loads(raw)
            revision = int(answer["revision"])
        except (ValueError, KeyError, TypeError):
            return None, None
        found = answer.get("units")
        if not isinstance(found, list):
            return revision, None
        wanted = set(names)
        return revision, {u["name"]: u for u in found if isinstance(u, dict) and u.get("name") in wanted}

    def feed_and_machines(self, names: list[str]) -> tuple[int | None, dict[str, dict] | None, list[dict] | None]:
        """A wait's start in one round trip: the feed's revision with the units read after it,
        and the machines' list (None: more than one page, read them with `pages`)."""
        path = self.feed_path(names, None, 0.0, True)
        machines_path = f"{API_PREFIX}/machines"
        feed_answer, machines_answer = self.many([("GET", path, None, ()), ("GET", machines_path, None, ())])
        for answer in (feed_answer, machines_answer):
            if isinstance(answer, Exception):
                raise answer
        revision, units = self.feed_answer(path, *feed_answer, names)
        if machines_answer[0] not in (200, 201, 204):
            raise self.error("GET", machines_path, *machines_answer)
        page = (lean.loads(machines_answer[1]) if machines_answer[1].strip() else None) or {}
        machines = None if page.get("nextPageToken") else page.get("machines") or []
        return revision, units, machines
