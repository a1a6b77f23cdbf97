"""The client library under fleetctl: one interface, two drivers (etcd now, the HTTP API later)."""

from __future__ import annotations

import abc
import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from fleetd.config import EtcdSettings
from fleetd.jobstate import current_state_of
from fleetd.model import DesiredState, Machine, Placement, Unit, UnitState
from fleetd.unit.file import UnitFile


@dataclass(frozen=True)
class UnitInfo:
    """A unit as fleet's API shows it (schema.Unit): desired and current state, target machine."""

    name: str
    file: UnitFile
    desired_state: DesiredState
    current_state: str  # inactive / loaded / launched; "" for global units
    machine_id: str  # target machine, "" if unscheduled or global
    is_global: bool

    @property
    def hash(self) -> str:
        return self.file.hash


class FleetClient(abc.ABC):
    """What fleetctl needs from a cluster. All methods raise fleetd.errors.FleetError subclasses."""

    @abc.abstractmethod
    async def units(self) -> list[UnitInfo]: ...

    @abc.abstractmethod
    async def unit(self, name: str) -> UnitInfo | None: ...

    async def units_named(self, names: Sequence[str], *, exact_machine: bool = True) -> list[UnitInfo]:
        """The named units that exist (in the order of `names`). With `exact_machine=False` a
        driver may leave `machine_id` empty for a unit placed on a machine that has not
        reported it yet (its current state is "inactive" either way): waits use that, so that
        each check costs the same whatever the size of the cluster."""
        wanted = set(names)
        found = {u.name: u for u in await self.units() if u.name in wanted}
        return [found[n] for n in dict.fromkeys(names) if n in found]

    @abc.abstractmethod
    async def create_units(self, units: Sequence[Unit]) -> list[str]: ...

    @abc.abstractmethod
    async def replace_unit(self, unit: Unit) -> None: ...

    @abc.abstractmethod
    async def set_desired_state(self, names: Sequence[str], state: DesiredState) -> None: ...

    @abc.abstractmethod
    async def destroy_units(self, names: Sequence[str]) -> list[str]: ...

    @abc.abstractmethod
    async def unit_states(self, name: str | None = None) -> list[UnitState]:
        """Published unit states, of every unit or of the one named."""

    @abc.abstractmethod
    async def machines(self) -> list[Machine]: ...

    async def set_machine_metadata(self, machine_id: str, key: str, value: str | None) -> None:
        raise NotImplementedError

    async def set_draining(self, machine_id: str, draining: bool) -> None:
        raise NotImplementedError

    # service discovery (fleetctl/commands_discovery.py)
    async def endpoints(self, service: str | None = None) -> list:
        """Published service endpoints (fleetd.registry.services.Endpoint), of one service or all."""
        raise NotImplementedError

    def watch_endpoints(self, service: str | None = None):
        """An async iterator of endpoint lists: now, then after every change."""
        raise NotImplementedError

    async def wait(
        self, check: Callable[[], "asyncio.Future[bool]"], timeout: float | None, poll: float = 0.25
    ) -> bool:
        """Re-evaluate `check` until it is true or the timeout passes. Drivers with a change
        feed override `changes()` so that waiting is woken by events instead of the poll;
        without one, the poll starts fast (see `poll_delays`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        async with self.changes() as changed:
            delays = poll_delays(poll, fast_start=isinstance(changed, _NoEvents))
            while True:
                if await check():
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                delay = next(delays)
                wait_for = delay if remaining is None else min(delay, remaining)
                try:
                    await asyncio.wait_for(changed.wait(), wait_for)
                except asyncio.TimeoutError:
                    pass
                changed.clear()

    def changes(self) -> "_NoChangeFeed":
        return _NoChangeFeed()

    async def close(self) -> None:
        return None


FAST_POLL = 0.025
FAST_POLL_FOR = 0.5


def poll_delays(poll: float, *, fast_start: bool) -> Iterator[float]:
    """Seconds between checks of a wait. Without a change feed: every FAST_POLL for the first
    FAST_POLL_FOR seconds (most units start within 0.1 s), then doubling up to `poll`;
    with a feed, the poll is only a safety net: `poll` throughout."""
    if fast_start and poll > FAST_POLL:
        yield from itertools.repeat(FAST_POLL, int(FAST_POLL_FOR / FAST_POLL))
        delay = FAST_POLL * 2
        while delay < poll:
            yield delay
            delay *= 2
    yield from itertools.repeat(poll)


class _NoEvents(asyncio.Event):
    """The event of a driver without a change feed: never set, waits end by timeout."""


class _NoChangeFeed:
    async def __aenter__(self) -> asyncio.Event:
        return _NoEvents()

    async def __aexit__(self, *exc: object) -> None:
        return None


class EtcdFleetClient(FleetClient):
    """Talks to the registry in etcd directly (fleetctl --driver=etcd)."""

    def __init__(self, settings: EtcdSettings):
        self._settings = settings
        self._registry = None

    async def _reg(self):
        if self._registry is None:
            from fleetd.registry import Registry

            self._registry = await Registry.connect(self._settings)
        return self._registry

    async def units(self) -> list[UnitInfo]:
        reg = await self._reg()
        units, placements, states = await asyncio.gather(reg.list_units(), reg.placements(), reg.unit_states())
        by_name: dict[str, list[UnitState]] = {}
        for s in states:
            by_name.setdefault(s.name, []).append(s)
        return [self._info(u, placements.get(u.name), by_name.get(u.name, [])) for u in units]

    @staticmethod
    def _info(unit: Unit, placement: Placement | None, states: Sequence[UnitState]) -> UnitInfo:
        current, machine = current_state_of(unit, placement, states)
        return UnitInfo(unit.name, unit.file, unit.desired_state, current, machine, unit.is_global)

    async def unit(self, name: str) -> UnitInfo | None:
        found = await self.units_named([name])
        return found[0] if found else None

    async def units_named(self, names: Sequence[str], *, exact_machine: bool = True) -> list[UnitInfo]:
        records = await (await self._reg()).unit_records(names, find_unreported=exact_machine)
        return [self._info(r.unit, r.placement, r.states) for n in dict.fromkeys(names)
                if (r := records.get(n)) is not None]

    async def create_units(self, units: Sequence[Unit]) -> list[str]:
        return await (await self._reg()).create_units(units)

    async def replace_unit(self, unit: Unit) -> None:
        await (await self._reg()).replace_unit(unit)

    async def set_desired_state(self, names: Sequence[str], state: DesiredState) -> None:
        await (await self._reg()).set_desired_state(names, state)

    async def destroy_units(self, names: Sequence[str]) -> list[str]:
        return await (await self._reg()).destroy_units(names)

    async def unit_states(self, name: str | None = None) -> list[UnitState]:
        return await (await self._reg()).unit_states(name=name)

    async def machines(self) -> list[Machine]:
        return await (await self._reg()).list_machines()

    async def set_machine_metadata(self, machine_id: str, key: str, value: str | None) -> None:
        await (await self._reg()).set_machine_metadata(machine_id, key, value)

    async def set_draining(self, machine_id: str, draining: bool) -> None:
        await (await self._reg()).set_draining(machine_id, draining)

    async def endpoints(self, service: str | None = None) -> list:
        from fleetd.registry.services import ServiceRecords

        return await ServiceRecords(await self._reg()).endpoints(service)

    async def watch_endpoints(self, service: str | None = None):
        from fleetd.registry.services import ServiceRecords

        async for current in ServiceRecords(await self._reg()).changes(service):
            yield list(current.values())

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
        reg = await self._client._reg()
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
