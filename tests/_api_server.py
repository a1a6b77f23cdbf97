"""Test helpers: a real fleetd API server (fleetd.api.server.ApiServer) on a real etcd registry.

`ApiHarness` runs in the test's event loop; `ThreadedApiServer` runs one in a background thread
(for fleetctl's CliRunner, which runs its own event loop per command).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import aiohttp

from fleetd.api.server import ApiServer
from fleetd.config import EtcdSettings, FleetConfig
from fleetd.model import Machine, Resources, UnitState
from fleetd.presence import Presence
from fleetd.registry import Registry

HELLO_OPTIONS = [
    {"section": "Unit", "name": "Description", "value": "Hello World"},
    {"section": "Service", "name": "ExecStart", "value": '/bin/sh -c "while true; do echo Hello; sleep 1; done"'},
]


def api_config(settings: EtcdSettings, tmp: Path, **overrides: Any) -> FleetConfig:
    base = dict(etcd=settings, api_socket=str(tmp / "fleet.sock"), api_tcp="127.0.0.1:0", api_insecure_tcp=True)
    base.update(overrides)
    return FleetConfig(**base)


async def register_machine(reg: Registry, machine_id: str, ip: str, metadata: dict | None = None,
                           ttl: float = 30) -> int:
    lease = await reg.grant_lease(ttl)
    await reg.register_machine(Machine(machine_id, ip, metadata or {}, version="0.1.0",
                                       capacity=Resources(2, 1 << 30)), lease)
    return lease


async def publish_state(reg: Registry, lease: int, name: str, machine_id: str, unit_hash: str,
                        active: str = "active", sub: str = "running") -> None:
    await reg.publish_states([UnitState(name, machine_id, unit_hash, "loaded", active, sub)], lease)


class ApiHarness:
    """An ApiServer on its own registry connection, plus an HTTP session to its TCP listener."""

    def __init__(self, settings: EtcdSettings, tmp: Path, machine: Machine | None = None, *,
                 registry: Any = None, **config: Any):
        self.settings = settings
        self.given_registry = registry  # e.g. a MemoryRegistry; None: connect to etcd
        self.config = api_config(settings, tmp, **config)
        self.tmp = tmp
        self.machine = machine
        self.registry: Registry | None = None
        self.server: ApiServer | None = None
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "ApiHarness":
        self.registry = self.given_registry or await Registry.connect(self.settings)
        presence = None
        if self.machine is not None:  # the server only reads presence.machine (its machine ID)
            presence = Presence(self.registry, self.machine, 30, self.tmp / "state")
        self.server = ApiServer(self.config, self.registry, presence, use_socket_activation=False)
        await self.server.start()
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()
        await self.server.stop()
        await self.registry.close()

    @property
    def base(self) -> str:
        return f"http://{self.server.tcp_addresses[0]}"

    async def call(self, method: str, path: str, *, body: Any = None, raw: bytes | None = None,
                   headers: dict | None = None) -> tuple[int, dict, Any]:
        """(status, headers, decoded JSON body or text or None)."""
        hdrs = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        skip = () if "Content-Type" in hdrs else ("Content-Type",)
        async with self.session.request(method, self.base + path, data=data, headers=hdrs,
                                        skip_auto_headers=skip) as resp:
            text = await resp.read()
            payload: Any = None
            if text:
                ctype = resp.headers.get("Content-Type", "")
                payload = json.loads(text) if ctype.startswith("application/json") else text.decode()
            return resp.status, dict(resp.headers), payload


class ThreadedApiServer:
    """An ApiServer serving from a background thread's event loop (for synchronous tests)."""

    def __init__(self, settings: EtcdSettings, tmp: Path, machine: Machine | None = None, **config: Any):
        self.harness = ApiHarness(settings, tmp, machine, **config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> "ThreadedApiServer":
        self.thread.start()
        self.run(self.harness.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self.harness.__aexit__(None, None, None))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def registry(self) -> Registry:
        return self.harness.registry

    @property
    def unix_endpoint(self) -> str:
        return f"unix://{self.harness.server.unix_paths[0]}"

    @property
    def tcp_endpoint(self) -> str:
        return self.harness.base


def replace_config(config: FleetConfig, **changes: Any) -> FleetConfig:
    return dataclasses.replace(config, **changes)
