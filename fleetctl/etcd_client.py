"""fleetctl's etcd driver (--driver=etcd): the FleetClient interface over the registry in etcd.

It runs on asyncio (aetcd); fleetctl runs its commands in an event loop (asyncio.run)."""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Sequence

from fleetd.config import EtcdSettings
from fleetd.model import DesiredState, Machine, Unit, UnitState
from fleetd.wire import UnitInfo, unit_info, unit_infos
from fleetctl.client import FleetClient, ImageImport

IMPORT_POLL = 0.25


class EtcdFleetClient(FleetClient):
    """Talks to the registry in etcd directly (fleetctl --driver=etcd)."""

    needs_event_loop = True

    def __init__(self, settings: EtcdSettings):
        self._settings = settings
        self._registry = None

    async def registry(self):
        """The connected fleetd.registry.Registry (for tools beside fleetctl, e.g. benchmarks)."""
        if self._registry is None:
            from fleetd.registry import Registry

            self._registry = await Registry.connect(self._settings)
        return self._registry

    async def units(self) -> list[UnitInfo]:
        reg = await self.registry()
        units, placements, states = await asyncio.gather(reg.list_units(), reg.placements(), reg.unit_states())
        return unit_infos(units, placements, states)

    async def unit(self, name: str) -> UnitInfo | None:
        found = await self.units_named([name])
        return found[0] if found else None

    async def units_named(self, names: Sequence[str], *, exact_machine: bool = True) -> list[UnitInfo]:
        records = await (await self.registry()).unit_records(names, find_unreported=exact_machine)
        return [unit_info(r.unit, r.placement, r.states) for n in dict.fromkeys(names)
                if (r := records.get(n)) is not None]

    async def create_units(self, units: Sequence[Unit]) -> list[str]:
        return await (await self.registry()).create_units(units)

    async def replace_unit(self, unit: Unit) -> None:
        await (await self.registry()).replace_unit(unit)

    async def set_desired_state(self, names: Sequence[str], state: DesiredState) -> None:
        await (await self.registry()).set_desired_state(names, state)

    async def destroy_units(self, names: Sequence[str]) -> list[str]:
        return await (await self.registry()).destroy_units(names)

    async def unit_states(self, name: str | None = None) -> list[UnitState]:
        return await (await self.registry()).unit_states(name=name)

    async def unit_states_named(self, names: Sequence[str]) -> list[UnitState]:
        wanted = list(dict.fromkeys(names))
        per_unit = await asyncio.gather(*(self.unit_states(n) for n in wanted))
        return [s for name, found in zip(wanted, per_unit) for s in found if s.name == name]

    async def machines(self) -> list[Machine]:
        return await (await self.registry()).list_machines()

    async def set_machine_metadata(self, machine_id: str, key: str, value: str | None) -> None:
        await (await self.registry()).set_machine_metadata(machine_id, key, value)

    async def set_draining(self, machine_id: str, draining: bool) -> None:
        await (await self.registry()).set_draining(machine_id, draining)

    async def endpoints(self, service: str | None = None) -> list:
        from fleetd.registry.services import ServiceRecords

        return await ServiceRecords(await self.registry()).endpoints(service)

    async def watch_endpoints(self, service: str | None = None):
        from fleetd.registry.services import ServiceRecords

        async for current in ServiceRecords(await self.registry()).changes(service):
            yield list(current.values())

    async def image_records(self, image_port: int, warn: Callable[[str], None] = lambda _: None) -> list:
        from fleetd.registry.images import ImageDirectory

        return await ImageDirectory(await self.registry()).list()

    async def import_image(self, machine_id: str, url: str, sha256: str, name: str,
                           timeout: float) -> ImageImport | None:
        from fleetd.registry.images import ImageDirectory

        directory = ImageDirectory(await self.registry())
        request = await directory.request_import(machine_id, url, sha256, name)
        started = time.monotonic()
        try:
            while True:
                answer = await directory.import_request(machine_id, request.id)
                if answer is not None and answer.state != "pending":
                    return ImageImport(answer.state, answer.digest or "", answer.error or "")
                if time.monotonic() - started > timeout:
                    return None
                await asyncio.sleep(IMPORT_POLL)
        finally:
            await directory.delete_import(machine_id, request.id)

    def changes(self) -> "_EtcdChangeFeed":
        return _EtcdChangeFeed(self)

    async def close(self) -> None:
        if self._registry is not None:
            await self._registry.close()


class _EtcdChangeFeed:
    """Sets an event whenever units, the schedule or unit states change (an etcd watch)."""

    def __init__(self, client: EtcdFleetClient):
        self._client = client
        self._task: asyncio.Task | None = None
        self._event = asyncio.Event()

    async def __aenter__(self) -> asyncio.Event:
        reg = await self._client.registry()
        revision = await reg.current_revision()
        prefixes = [reg.keys.jobs, reg.keys.schedule, reg.keys.states]

        async def run() -> None:
            try:
                async for _ in reg.watch(prefixes, revision + 1):
                    self._event.set()
            except Exception:  # the waiter falls back to polling
                pass

        self._task = asyncio.create_task(run())
        return self._event

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
