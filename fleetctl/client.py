"""The client interface under fleetctl: what a command may ask of a cluster, and two drivers.

`FleetClient` is the only way a command reaches the cluster. Its methods are coroutines; the
drivers are fleetctl/etcd_client.py (`--driver=etcd`: the registry in etcd, asyncio and aetcd)
and fleetctl/api_client.py (the default: fleet's HTTP API on the standard library). The API
driver's coroutines never suspend (they do their I/O blocking), so fleetctl runs a command with
it without an event loop and without importing asyncio (see fleetctl/commands/common.py).

This module imports neither asyncio nor a driver: `fleetctl list-units` pays only for what it
uses.
"""

from __future__ import annotations

import abc
import itertools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable, Iterator, Sequence

from fleetd.model import DesiredState, Machine, Unit, UnitState
from fleetd.wire import UnitInfo

if TYPE_CHECKING:  # pragma: no cover
    import asyncio

__all__ = ["CommandOutput", "FleetClient", "ImageImport", "UnitInfo", "poll_delays", "FAST_POLL", "FAST_POLL_FOR"]


@dataclass(frozen=True)
class CommandOutput:
    """A command run by a fleetd for us (status): where, its exit status and its output."""

    machine_id: str
    exit_status: int
    output: str


@dataclass(frozen=True)
class ImageImport:
    """The answer of a machine to an image import request (state: done or failed)."""

    state: str
    digest: str = ""
    error: str = ""


class FleetClient(abc.ABC):
    """What fleetctl needs from a cluster. All methods raise fleetd.errors.FleetError subclasses."""

    #: True if the driver's fleetd runs `systemctl status`/`journalctl` on the unit's machine
    #: for us (unit_status, journal); False: fleetctl runs them itself, locally or over SSH.
    runs_remote_commands: bool = False

    #: True if the driver's coroutines suspend (they need an asyncio event loop to run).
    needs_event_loop: bool = True

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

    async def unit_states_named(self, names: Sequence[str]) -> list[UnitState]:
        """The published states of the named units (each unit's, in the order of `names`)."""
        found = []
        for name in dict.fromkeys(names):
            found += [s for s in await self.unit_states(name) if s.name == name]
        return found

    @abc.abstractmethod
    async def machines(self) -> list[Machine]: ...

    async def set_machine_metadata(self, machine_id: str, key: str, value: str | None) -> None:
        raise NotImplementedError

    async def set_draining(self, machine_id: str, draining: bool) -> None:
        raise NotImplementedError

    # service discovery (fleetctl/commands/discovery.py)
    async def endpoints(self, service: str | None = None) -> list:
        """Published service endpoints (fleetd.model.Endpoint), of one service or all."""
        raise NotImplementedError

    def watch_endpoints(self, service: str | None = None):
        """An async iterator of endpoint lists: now, then after every change."""
        raise NotImplementedError

    # ------------------------------------------------------------------ remote commands (runs_remote_commands)

    async def unit_status(self, name: str, machine_id: str | None = None) -> CommandOutput:
        raise NotImplementedError

    def journal(self, name: str, *, lines: int = 10, output: str = "short", follow: bool = False,
                machine_id: str | None = None) -> AsyncIterator[bytes]:
        raise NotImplementedError

    # ------------------------------------------------------------------ images

    async def image_records(self, image_port: int, warn: Callable[[str], None] = lambda _: None) -> list:
        """Every machine's image record (fleetd.model.MachineImages); `warn` is told
        (one line) about a machine whose record could not be read."""
        raise NotImplementedError

    async def import_image(self, machine_id: str, url: str, sha256: str, name: str,
                           timeout: float) -> ImageImport | None:
        """Ask a machine to import the archive at `url`; its answer, None if none within timeout."""
        raise NotImplementedError

    # ------------------------------------------------------------------ waiting

    async def wait(self, check: Callable[[], Awaitable[bool]], timeout: float | None,
                   poll: float = 0.25, names: Sequence[str] = ()) -> bool:
        """Re-evaluate `check` until it is true or the timeout passes. Drivers with a change
        feed override `changes()` so that waiting is woken by events instead of the poll;
        without one, the poll starts fast (see `poll_delays`). `names`: the units the check
        looks at (a driver may watch only those)."""
        import asyncio

        deadline = None if timeout is None else time.monotonic() + timeout
        async with self.changes() as changed:
            delays = poll_delays(poll, fast_start=changed is None)
            event = changed if changed is not None else asyncio.Event()
            while True:
                if await check():
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                delay = next(delays)
                wait_for = delay if remaining is None else min(delay, remaining)
                try:
                    await asyncio.wait_for(event.wait(), wait_for)
                except asyncio.TimeoutError:
                    pass
                event.clear()

    def changes(self) -> "NoChangeFeed":
        """An async context manager giving an asyncio.Event set on changes (None: no feed)."""
        return NoChangeFeed()

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


class NoChangeFeed:
    """The change feed of a driver without one: waits poll."""

    async def __aenter__(self) -> "asyncio.Event | None":
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None
