"""fleetctl's API driver: the FleetClient interface over fleet's HTTP API v1 (aiohttp).

Endpoints: `unix:///var/run/fleet.sock` (or a bare `/path`), `http://host:port`, `https://host:port`
(TLS with --ca-file, and --cert-file/--key-file for client certificates), or `host:port`.
HTTP errors become fleetd.errors exceptions: 404 UnitNotFound, 409 UnitConflict, 400 UnitError,
503 and connection failures ApiUnavailable (one line naming the endpoint), others ApiError.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence
from urllib.parse import quote, urlsplit

import aiohttp
import yarl

from fleetd.api.listeners import client_ssl_context
from fleetd.api.wire import go_json, machine_from_wire, options_to_wire, state_from_wire, unit_from_wire
from fleetd.errors import ApiError, ApiUnavailable, ConfigError, UnitConflict, UnitError, UnitNotFound
from fleetd.model import DesiredState, Machine, Unit, UnitState
from fleetd.unit.requirements import requirements_of
from fleetctl.client import FleetClient, UnitInfo

API_PREFIX = "/fleet/v1"
UNIX_HOST = "domain-sock"  # fleetctl's Host header over a unix socket
PARALLEL_REQUESTS = 16


@dataclass(frozen=True)
class Endpoint:
    """Where the API is: a unix socket path, or a base URL."""

    display: str
    unix_path: str | None = None
    base_url: str = f"http://{UNIX_HOST}"

    @property
    def is_tls(self) -> bool:
        return self.base_url.startswith("https://")


def parse_endpoint(text: str) -> Endpoint:
    """fleetctl's --endpoint for the API driver (only the first of a comma-separated list)."""
    first = text.split(",")[0].strip()
    if not first:
        raise ConfigError("--endpoint: empty endpoint")
    if first.startswith("unix://"):
        path = first[len("unix://"):]
        if not path.startswith("/"):
            raise ConfigError(f"--endpoint {first}: expected unix:///absolute/path")
        return Endpoint(first, unix_path=path)
    if first.startswith("/"):
        return Endpoint(f"unix://{first}", unix_path=first)
    if "://" not in first:
        first = f"http://{first}"
    url = urlsplit(first)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"--endpoint {text}: expected unix:///path, http(s)://host:port or host:port")
    return Endpoint(first, base_url=f"{url.scheme}://{url.netloc}{url.path.rstrip('/')}")


@dataclass(frozen=True)
class CommandOutput:
    """A command run by a fleetd for us (status): where, its exit status and its output."""

    machine_id: str
    exit_status: int
    output: str


class ApiFleetClient(FleetClient):
    runs_remote_commands = True

    def __init__(self, endpoint: str, timeout: float = 3.0, cafile: str | None = None,
                 certfile: str | None = None, keyfile: str | None = None):
        self.endpoint = parse_endpoint(endpoint)
        self.multiple_endpoints = "," in endpoint.strip(",")
        self.timeout = timeout
        self._tls = (cafile, certfile, keyfile)
        self._session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ transport

    def _new_session(self) -> aiohttp.ClientSession:
        ep = self.endpoint
        if ep.unix_path is not None:
            connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=ep.unix_path)
        else:
            ssl_ctx: Any = False
            if ep.is_tls or any(self._tls):
                ssl_ctx = client_ssl_context(*self._tls)
            connector = aiohttp.TCPConnector(ssl=ssl_ctx)
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"User-Agent": "fleetctl-py"},
            auto_decompress=True,
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = self._new_session()
        return self._session

    def url(self, *segments: str, prefix: str = API_PREFIX) -> yarl.URL:
        path = prefix + "".join("/" + quote(s, safe="@:") for s in segments)
        return yarl.URL(self.endpoint.base_url + path, encoded=True)

    def _unreachable(self, exc: BaseException) -> ApiUnavailable:
        if isinstance(exc, asyncio.TimeoutError):
            why = f"no answer within {self.timeout:g}s"
        else:
            why = str(exc) or type(exc).__name__
            if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error is not None:
                why = exc.os_error.strerror or str(exc.os_error)
        return ApiUnavailable(f"fleet API unreachable at {self.endpoint.display}: {why}")

    async def request(self, method: str, url: yarl.URL, *, params: dict | None = None, body: Any = None,
                      headers: dict | None = None, ok: Sequence[int] = (200, 201, 204),
                      timeout: aiohttp.ClientTimeout | None = None) -> tuple[int, Any]:
        """One request; returns (status, decoded JSON or None) for statuses in `ok`."""
        hdrs = dict(headers or {})
        data = None
        if body is not None:
            data = go_json(body)
            hdrs["Content-Type"] = "application/json"
        try:
            async with self.session.request(method, url, params=params, data=data, headers=hdrs,
                                            timeout=timeout or aiohttp.ClientTimeout(total=self.timeout)) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise self._unreachable(exc) from None
        if status in ok:
            return status, json.loads(raw) if raw.strip() else None
        raise self.error(method, url, status, raw)

    def error(self, method: str, url: yarl.URL, status: int, raw: bytes) -> Exception:
        message = ""
        try:
            message = json.loads(raw)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = raw.decode("utf-8", "replace").strip()[:200]
        if status == 503:
            return ApiUnavailable(f"{message or 'service unavailable'} (fleet API at {self.endpoint.display})")
        if status == 404:
            return UnitNotFound(message or f"{url.path} not found")
        if status == 409:
            return UnitConflict(message or "conflict")
        if status == 400:
            return UnitError(message or "bad request")
        return ApiError(f"fleet API {method} {url.path}: {status} {message}".rstrip(), status)

    async def _pages(self, resource: str, key: str, params: dict | None = None) -> list[dict]:
        items: list[dict] = []
        query = dict(params or {})
        while True:
            _, page = await self.request("GET", self.url(resource), params=query or None)
            page = page or {}
            items.extend(page.get(key) or [])
            token = page.get("nextPageToken")
            if not token:
                return items
            query["nextPageToken"] = token

    async def _parallel(self, coros) -> list:
        semaphore = asyncio.Semaphore(PARALLEL_REQUESTS)

        async def limited(coro):
            async with semaphore:
                return await coro

        return await asyncio.gather(*(limited(c) for c in coros))

    # ------------------------------------------------------------------ FleetClient

    @staticmethod
    def _info(data: dict) -> UnitInfo:
        unit, current, machine = unit_from_wire(data)
        is_global = requirements_of(unit.file, unit.name).is_global
        return UnitInfo(unit.name, unit.file, unit.desired_state, current, machine, is_global)

    async def units(self) -> list[UnitInfo]:
        return [self._info(u) for u in await self._pages("units", "units")]

    async def unit(self, name: str) -> UnitInfo | None:
        try:
            _, data = await self.request("GET", self.url("units", name))
        except UnitNotFound:
            return None
        return self._info(data)

    async def units_named(self, names: Sequence[str], *, exact_machine: bool = True) -> list[UnitInfo]:
        """One GET /units/<name> per name, concurrently: a wait polls this, and listing every
        unit of a large cluster at each poll would cost far more."""
        wanted = list(dict.fromkeys(names))
        if len(wanted) > 50:  # a page or two of the list is cheaper than that many requests
            return await super().units_named(wanted, exact_machine=exact_machine)
        found = await asyncio.gather(*(self.unit(n) for n in wanted))
        return [info for info in found if info is not None]

    def _unit_body(self, unit: Unit) -> dict[str, Any]:
        return {"name": unit.name, "desiredState": unit.desired_state.value, "options": options_to_wire(unit.file)}

    async def create_units(self, units: Sequence[Unit]) -> list[str]:
        async def create(unit: Unit) -> str | None:
            status, _ = await self.request("PUT", self.url("units", unit.name), body=self._unit_body(unit),
                                           headers={"If-None-Match": "*"}, ok=(201, 412))
            return unit.name if status == 201 else None

        return [n for n in await self._parallel(create(u) for u in units) if n]

    async def replace_unit(self, unit: Unit) -> None:
        await self.request("PUT", self.url("units", unit.name), body=self._unit_body(unit))

    async def set_desired_state(self, names: Sequence[str], state: DesiredState) -> None:
        async def one(name: str) -> None:
            try:
                await self.request("PUT", self.url("units", name), body={"name": name, "desiredState": state.value})
            except UnitConflict as exc:
                if "does not exist" in str(exc):
                    raise UnitNotFound(f"unit {name} not found") from None
                raise

        await self._parallel(one(n) for n in dict.fromkeys(names))

    async def destroy_units(self, names: Sequence[str]) -> list[str]:
        async def one(name: str) -> str | None:
            status, _ = await self.request("DELETE", self.url("units", name), ok=(204, 404))
            return name if status == 204 else None

        return [n for n in await self._parallel(one(n) for n in dict.fromkeys(names)) if n]

    async def unit_states(self, name: str | None = None, machine_id: str | None = None) -> list[UnitState]:
        params = {k: v for k, v in (("unitName", name), ("machineID", machine_id)) if v}
        return [state_from_wire(s) for s in await self._pages("state", "states", params)]

    async def machines(self) -> list[Machine]:
        return [machine_from_wire(m) for m in await self._pages("machines", "machines")]

    async def set_machine_metadata(self, machine_id: str, key: str, value: str | None) -> None:
        op = {"op": "remove", "path": f"/{machine_id}/metadata/{key}"}
        if value is not None:
            op = {"op": "add", "path": op["path"], "value": {"value": value}}
        await self.request("PATCH", self.url("machines"), body=[op])

    async def endpoints(self, service: str | None = None) -> list:
        from fleetd.registry.services import Endpoint

        path = self.url("services", service, "endpoints") if service else self.url("endpoints")
        _, data = await self.request("GET", path)
        return [Endpoint.from_json(e) for e in (data or {}).get("endpoints") or []]

    async def watch_endpoints(self, service: str | None = None):
        """GET ...endpoints?watch=true: one JSON line now and one per change (no timeout)."""
        from fleetd.registry.services import Endpoint

        url = self.url("services", service, "endpoints") if service else self.url("endpoints")
        try:
            async with self.session.get(url, params={"watch": "true"},
                                        timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout)) as resp:
                if resp.status != 200:
                    raise self.error("GET", url, resp.status, await resp.read())
                async for line in resp.content:
                    if line.strip():
                        yield [Endpoint.from_json(e) for e in json.loads(line).get("endpoints") or []]
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise self._unreachable(exc) from None
        raise self._unreachable(ConnectionError("the watch stream ended"))

    async def set_draining(self, machine_id: str, draining: bool) -> None:
        path = f"/{machine_id}/draining"
        op = {"op": "add", "path": path, "value": {"value": "true"}} if draining else {"op": "remove", "path": path}
        await self.request("PATCH", self.url("machines"), body=[op])

    # ------------------------------------------------------------------ beyond fleet: status, journal

    async def unit_status(self, name: str, machine_id: str | None = None) -> CommandOutput:
        params = {"machineID": machine_id} if machine_id else None
        url = self.url("units", name, "status")
        try:
            async with self.session.get(url, params=params,
                                        timeout=aiohttp.ClientTimeout(total=max(self.timeout, 60.0))) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise self.error("GET", url, resp.status, raw)
                return CommandOutput(resp.headers.get("X-Fleet-Machine-ID", machine_id or ""),
                                     int(resp.headers.get("X-Fleet-Exit-Status", "0")),
                                     raw.decode("utf-8", "replace"))
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise self._unreachable(exc) from None

    async def journal(self, name: str, *, lines: int = 10, output: str = "short", follow: bool = False,
                      machine_id: str | None = None) -> AsyncIterator[bytes]:
        params = {"lines": str(lines), "output": output, "follow": "true" if follow else "false"}
        if machine_id:
            params["machineID"] = machine_id
        url = self.url("units", name, "journal")
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout,
                                        sock_read=None if follow else max(self.timeout, 60.0))
        try:
            async with self.session.get(url, params=params, timeout=timeout) as resp:
                if resp.status != 200:
                    raise self.error("GET", url, resp.status, await resp.read())
                async for chunk in resp.content.iter_any():
                    yield chunk
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise self._unreachable(exc) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
