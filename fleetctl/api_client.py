"""fleetctl's API driver: the FleetClient interface over fleet's HTTP API v1, on the standard
library (http.client), so that `fleetctl list-units` imports no asyncio, aiohttp or gRPC.

Endpoints: `unix:///var/run/fleet.sock` (or a bare `/path`), `http://host:port`, `https://host:port`
(TLS with --ca-file, and --cert-file/--key-file for client certificates), or `host:port`.
HTTP errors become fleetd.errors exceptions: 404 UnitNotFound, 409 UnitConflict, 400 UnitError,
503 and connection failures ApiUnavailable (one line naming the endpoint), others ApiError.

The methods are coroutines (the FleetClient interface) that never suspend: each does its
requests blocking, one keep-alive connection per thread; batches (create, set state, destroy of
several units) go out concurrently on a few threads. Blocking waits use the API's change feed
(GET /fleet/v1/_watch/units, docs/api.md) when the server has it, else they poll.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence
from urllib.parse import quote, urlencode, urlsplit

from fleetd.errors import ApiError, ApiUnavailable, UnitConflict, UnitError, UnitNotFound
from fleetd.model import DesiredState, Machine, MachineImages, Unit, UnitState
from fleetd.model import Endpoint as ServiceEndpoint  # not fleetctl.endpoint's Endpoint (the API's address)
from fleetd.wire import go_json, machine_from_wire, options_to_wire, state_from_wire, unit_from_wire
from fleetctl.client import CommandOutput, FleetClient, UnitInfo, poll_delays
from fleetctl.endpoint import Endpoint, UnixConnection, parse_endpoint
from fleetctl.fast_http import error_message, name_chunks, unreachable_reason, until_next_check

API_PREFIX = "/fleet/v1"
WATCH_PATH = API_PREFIX + "/_watch/units"
IMAGES_API = "/fleet/images/v1/images"
PARALLEL_REQUESTS = 16
REMOTE_COMMAND_TIMEOUT = 60.0
REQUEST_TIMEOUT: float = -1.0  # _send's default: the client's --request-timeout (None: no timeout)

__all__ = ["ApiFleetClient", "CommandOutput", "Endpoint", "parse_endpoint"]


class ApiFleetClient(FleetClient):
    runs_remote_commands = True
    needs_event_loop = False

    def __init__(self, endpoint: str, timeout: float = 3.0, cafile: str | None = None,
                 certfile: str | None = None, keyfile: str | None = None):
        self.endpoint = parse_endpoint(endpoint)
        self.timeout = timeout
        self._tls = (cafile, certfile, keyfile)
        self._ssl_context = None
        url = urlsplit(self.endpoint.base_url)
        self._path_prefix = url.path
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._feed = True  # until the server shows it has no change feed
        self._pool = None  # concurrent.futures.ThreadPoolExecutor, for batches

    # ------------------------------------------------------------------ transport

    def _new_connection(self) -> http.client.HTTPConnection:
        ep = self.endpoint
        if ep.unix_path is not None:
            return UnixConnection(ep.unix_path, self.timeout)
        url = urlsplit(ep.base_url)
        if url.scheme == "https":  # as before: --ca-file etc. apply to https:// endpoints
            return http.client.HTTPSConnection(url.hostname, url.port, timeout=self.timeout,
                                               context=self._client_ssl_context())
        return http.client.HTTPConnection(url.hostname, url.port, timeout=self.timeout)

    def _client_ssl_context(self):
        if self._ssl_context is None:
            from fleetd.wire import client_ssl_context

            self._ssl_context = client_ssl_context(*self._tls)
        return self._ssl_context

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._new_connection()
            with self._lock:
                self._connections.append(conn)
        return conn

    def path(self, *segments: str, prefix: str = API_PREFIX) -> str:
        return self._path_prefix + prefix + "".join("/" + quote(s, safe="@:") for s in segments)

    def _unreachable(self, exc: BaseException, timeout: float | None = None) -> ApiUnavailable:
        why = unreachable_reason(exc, timeout or self.timeout)
        return ApiUnavailable(f"fleet API unreachable at {self.endpoint.display}: {why}")

    def _send(self, method: str, path: str, *, params: Any = None, body: Any = None, headers: dict | None = None,
              timeout: float | None = REQUEST_TIMEOUT, stream: bool = False) -> tuple[http.client.HTTPResponse, bytes]:
        """One request on this thread's keep-alive connection: the response and its body (b""
        and left to read with `stream`)."""
        hdrs = {"User-Agent": "fleetctl-py", **(headers or {})}
        data = None
        if body is not None:
            data = go_json(body)
            hdrs["Content-Type"] = "application/json"
        if params:
            path += "?" + urlencode(params, doseq=True)
        wait = self.timeout if timeout == REQUEST_TIMEOUT else timeout
        for attempt in (1, 2):
            conn = self._connection()
            reused = conn.sock is not None
            try:
                conn.timeout = wait
                if conn.sock is not None:
                    conn.sock.settimeout(wait)
                conn.request(method, path, body=data, headers=hdrs)
                response = conn.getresponse()
                return response, b"" if stream else response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                if reused and attempt == 1:  # the server closed an idle keep-alive connection
                    continue
                raise self._unreachable(exc, wait) from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise self._unreachable(exc, wait) from None
        raise AssertionError("unreachable")

    def request(self, method: str, path: str, *, params: Any = None, body: Any = None,
                headers: dict | None = None, ok: Sequence[int] = (200, 201, 204)) -> tuple[int, Any]:
        """One request; returns (status, decoded JSON or None) for statuses in `ok`."""
        response, raw = self._send(method, path, params=params, body=body, headers=headers)
        if response.status in ok:
            return response.status, json.loads(raw) if raw.strip() else None
        raise self.error(method, path, response.status, raw)

    def error(self, method: str, path: str, status: int, raw: bytes) -> Exception:
        message = error_message(raw)
        path = path.split("?", 1)[0]
        if status == 503:
            return ApiUnavailable(f"{message or 'service unavailable'} (fleet API at {self.endpoint.display})")
        if status == 404:
            return UnitNotFound(message or f"{path} not found")
        if status == 409:
            return UnitConflict(message or "conflict")
        if status == 400:
            return UnitError(message or "bad request")
        return ApiError(f"fleet API {method} {path}: {status} {message}".rstrip(), status)

    def _pages(self, resource: str, key: str, params: dict | None = None) -> list[dict]:
        items: list[dict] = []
        query = dict(params or {})
        while True:
            _, page = self.request("GET", self.path(resource), params=query or None)
            page = page or {}
            items.extend(page.get(key) or [])
            token = page.get("nextPageToken")
            if not token:
                return items
            query["nextPageToken"] = token

    def _parallel(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list:
        """fn over items, on up to PARALLEL_REQUESTS threads (each with its own connection)."""
        if len(items) <= 1:
            return [fn(item) for item in items]
        if self._pool is None:  # kept, with its threads' keep-alive connections, until close()
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(PARALLEL_REQUESTS, thread_name_prefix="fleetctl-api")
        return list(self._pool.map(fn, items))

    # ------------------------------------------------------------------ FleetClient

    async def units(self) -> list[UnitInfo]:
        return [unit_from_wire(u) for u in self._pages("units", "units")]

    def _unit(self, name: str) -> UnitInfo | None:
        try:
            _, data = self.request("GET", self.path("units", name))
        except UnitNotFound:
            return None
        return unit_from_wire(data)

    async def unit(self, name: str) -> UnitInfo | None:
        return self._unit(name)

    async def units_named(self, names: Sequence[str], *, exact_machine: bool = True) -> list[UnitInfo]:
        """GET /units?unitName=A&unitName=B... (beyond fleet, docs/api.md: the named units in one
        request; fleet's own API ignores the parameter and pages through every unit, filtered here)."""
        wanted = list(dict.fromkeys(names))
        found: dict[str, UnitInfo] = {}
        for chunk in name_chunks(wanted):
            found.update((u["name"], unit_from_wire(u)) for u in self._pages("units", "units", {"unitName": chunk})
                         if u.get("name") in chunk)
        return [found[n] for n in wanted if n in found]

    def _unit_body(self, unit: Unit) -> dict[str, Any]:
        return {"name": unit.name, "desiredState": unit.desired_state.value, "options": options_to_wire(unit.file)}

    async def create_units(self, units: Sequence[Unit]) -> list[str]:
        def create(unit: Unit) -> str | None:
            status, _ = self.request("PUT", self.path("units", unit.name), body=self._unit_body(unit),
                                     headers={"If-None-Match": "*"}, ok=(201, 412))
            return unit.name if status == 201 else None

        return [n for n in self._parallel(create, list(units)) if n]

    async def replace_unit(self, unit: Unit) -> None:
        self.request("PUT", self.path("units", unit.name), body=self._unit_body(unit))

    async def set_desired_state(self, names: Sequence[str], state: DesiredState) -> None:
        def one(name: str) -> None:
            try:
                self.request("PUT", self.path("units", name), body={"name": name, "desiredState": state.value})
            except UnitConflict as exc:
                if "does not exist" in str(exc):
                    raise UnitNotFound(f"unit {name} not found") from None
                raise

        self._parallel(one, list(dict.fromkeys(names)))

    async def destroy_units(self, names: Sequence[str]) -> list[str]:
        def one(name: str) -> str | None:
            status, _ = self.request("DELETE", self.path("units", name), ok=(204, 404))
            return name if status == 204 else None

        return [n for n in self._parallel(one, list(dict.fromkeys(names))) if n]

    async def unit_states(self, name: str | None = None, machine_id: str | None = None) -> list[UnitState]:
        params = {k: v for k, v in (("unitName", name), ("machineID", machine_id)) if v}
        return [state_from_wire(s) for s in self._pages("state", "states", params)]

    async def unit_states_named(self, names: Sequence[str]) -> list[UnitState]:
        def of(name: str) -> list[UnitState]:
            return [state_from_wire(s) for s in self._pages("state", "states", {"unitName": name})]

        wanted = list(dict.fromkeys(names))
        return [s for name, found in zip(wanted, self._parallel(of, wanted)) for s in found if s.name == name]

    async def machines(self) -> list[Machine]:
        return [machine_from_wire(m) for m in self._pages("machines", "machines")]

    async def set_machine_metadata(self, machine_id: str, key: str, value: str | None) -> None:
        op = {"op": "remove", "path": f"/{machine_id}/metadata/{key}"}
        if value is not None:
            op = {"op": "add", "path": op["path"], "value": {"value": value}}
        self.request("PATCH", self.path("machines"), body=[op])

    async def set_draining(self, machine_id: str, draining: bool) -> None:
        path = f"/{machine_id}/draining"
        op = {"op": "add", "path": path, "value": {"value": "true"}} if draining else {"op": "remove", "path": path}
        self.request("PATCH", self.path("machines"), body=[op])

    async def endpoints(self, service: str | None = None) -> list:
        path = self.path("services", service, "endpoints") if service else self.path("endpoints")
        _, data = self.request("GET", path)
        return [ServiceEndpoint.from_json(e) for e in (data or {}).get("endpoints") or []]

    async def watch_endpoints(self, service: str | None = None):
        """GET ...endpoints?watch=true: one JSON line now and one per change (no timeout)."""
        path = self.path("services", service, "endpoints") if service else self.path("endpoints")
        conn = self._new_connection()  # its own: the stream holds it while other requests go on
        try:
            conn.request("GET", path + "?watch=true", headers={"User-Agent": "fleetctl-py"})
            conn.sock.settimeout(None)
            response = conn.getresponse()
            if response.status != 200:
                raise self.error("GET", path, response.status, response.read())
            while line := response.readline():
                if line.strip():
                    yield [ServiceEndpoint.from_json(e) for e in json.loads(line).get("endpoints") or []]
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc, None) from None
        finally:
            conn.close()
        raise self._unreachable(ConnectionError("the watch stream ended"))

    # ------------------------------------------------------------------ beyond fleet: status, journal

    async def unit_status(self, name: str, machine_id: str | None = None) -> CommandOutput:
        path = self.path("units", name, "status")
        response, raw = self._send("GET", path, params={"machineID": machine_id} if machine_id else None,
                                   timeout=max(self.timeout, REMOTE_COMMAND_TIMEOUT))
        if response.status != 200:
            raise self.error("GET", path, response.status, raw)
        return CommandOutput(response.getheader("X-Fleet-Machine-ID", machine_id or ""),
                             int(response.getheader("X-Fleet-Exit-Status", "0")), raw.decode("utf-8", "replace"))

    async def journal(self, name: str, *, lines: int = 10, output: str = "short", follow: bool = False,
                      machine_id: str | None = None) -> AsyncIterator[bytes]:
        params = {"lines": str(lines), "output": output, "follow": "true" if follow else "false"}
        if machine_id:
            params["machineID"] = machine_id
        path = self.path("units", name, "journal")
        response, _ = self._send("GET", path, params=params, stream=True,
                                 timeout=None if follow else max(self.timeout, REMOTE_COMMAND_TIMEOUT))
        if response.status != 200:
            raise self.error("GET", path, response.status, response.read())
        try:
            while chunk := response.read1(65536):
                yield chunk
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        finally:
            response.close()

    # ------------------------------------------------------------------ images (from each machine's image server)

    async def image_records(self, image_port: int, warn: Callable[[str], None] = lambda _: None) -> list:
        records = []
        for machine in await self.machines():
            if not machine.public_ip:
                continue
            host = f"[{machine.public_ip}]" if ":" in machine.public_ip else machine.public_ip
            timeout = max(self.timeout, 1.0)
            if self._tls[1]:  # image servers of a cluster with a PKI ask for a cluster certificate
                url = f"https://{host}:{image_port}{IMAGES_API}"
                conn = http.client.HTTPSConnection(host.strip("[]"), image_port, timeout=timeout,
                                                   context=self._client_ssl_context())
            else:
                url = f"http://{host}:{image_port}{IMAGES_API}"
                conn = http.client.HTTPConnection(host.strip("[]"), image_port, timeout=timeout)
            try:
                conn.request("GET", IMAGES_API)
                response = conn.getresponse()
                data = json.loads(response.read())
                if response.status != 200 or not isinstance(data, dict):
                    raise ValueError(f"HTTP {response.status}")
            except (OSError, http.client.HTTPException, ValueError) as exc:
                warn(f"WARNING: machine {machine.id[:8]}: no image list from {url}: {exc or type(exc).__name__}")
                continue
            finally:
                conn.close()
            data["machineID"] = machine.id
            records.append(MachineImages.from_json(data))
        return records

    # ------------------------------------------------------------------ waiting, woken by the change feed

    def feed_revision(self, since: int | None = None, hold: float = 0.0,
                      names: Sequence[str] = ()) -> int | None:
        """The change feed: without `since`, the current revision; with it, the revision of the
        first change of the named units (any unit without names) after `since`, waiting up to
        `hold` seconds (`since` again if none). None if the server has no change feed."""
        if not self._feed:
            return None
        params: list[tuple[str, str]] = [("unitName", n) for n in names]
        if since is not None:
            params += [("since", str(since)), ("timeout", f"{hold:g}")]
        path = self._path_prefix + WATCH_PATH
        response, raw = self._send("GET", path, params=params, timeout=hold + self.timeout)
        if response.status in (404, 405, 501):  # an API without the feed (e.g. fleet's own)
            self._feed = False
            return None
        if response.status != 200:
            raise self.error("GET", path, response.status, raw)
        try:
            return int(json.loads(raw)["revision"])
        except (ValueError, KeyError, TypeError):
            self._feed = False
            return None

    async def wait(self, check: Callable[[], Awaitable[bool]], timeout: float | None,
                   poll: float = 0.25, names: Sequence[str] = ()) -> bool:
        """Check, then sleep in a long-poll of the change feed until the named units change;
        without a feed, poll (fast first, see poll_delays)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        since = self.feed_revision(names=names)
        delays = poll_delays(poll, fast_start=True)
        while True:
            if await check():
                return True
            go_on, since = until_next_check(lambda s, hold: self.feed_revision(s, hold, names), since, deadline, delays)
            if not go_on:
                return False

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()
