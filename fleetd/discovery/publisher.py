"""The agent's side of service discovery: publish the endpoints of this machine's active units.

The agent tells an `EndpointPublisher` (through the small `UnitObserver` interface it calls)
which units it runs (with their unit files) and every systemd state it sees. The publisher:

* starts a check loop per endpoint that declares `Check=` (bounded concurrency, see checks.py);
* computes the endpoints that should be in etcd (pure: `wanted_endpoints`): one per service of
  every active unit, `health` passing when its check passes (or it has none), critical
  otherwise;
* writes the difference to etcd (records and SkyDNS keys, under the machine's lease), woken by
  every change; after a new lease it writes everything again.

Nothing here blocks the agent: the observer calls only record facts and set an event.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Mapping

from fleetd.discovery.checks import CheckRunner, Health, next_health
from fleetd.errors import RegistryError, UnitError
from fleetd.registry.services import CRITICAL, PASSING, Endpoint, ServiceRecords
from fleetd.unit.file import UnitFile
from fleetd.unit.service import ServiceSpec, has_services, services_of, unit_label, with_host

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Declared:
    unit: str
    spec: ServiceSpec


def declared_services(units: Mapping[str, UnitFile], hostname: str, host: str) -> dict[tuple[str, str], Declared]:
    """(unit, service) -> the declaration, for units that declare services; a unit whose
    [X-Service] is invalid (it passed submit-time checks, so only through %H) is logged and skipped."""
    out: dict[tuple[str, str], Declared] = {}
    for name, file in units.items():
        if not has_services(file):
            continue
        try:
            specs = services_of(file, name, hostname)
        except UnitError as exc:
            log.warning("%s; its services are not published", exc)
            continue
        for spec in specs:
            out[(name, spec.name)] = Declared(name, with_host(spec, host))
    return out


def wanted_endpoints(declared: Mapping[tuple[str, str], Declared], active: Mapping[str, bool],
                     health: Mapping[tuple[str, str], Health], machine_id: str, host: str) -> dict[tuple[str, str], Endpoint]:
    """The endpoints this machine should publish (pure)."""
    out = {}
    for key, decl in declared.items():
        if not active.get(decl.unit):
            continue
        spec = decl.spec
        healthy = spec.check is None or health.get(key, Health()).healthy
        out[key] = Endpoint(service=spec.name, unit=decl.unit, machine_id=machine_id, host=host, port=spec.port,
                            protocol=spec.protocol, tags=spec.tags, health=PASSING if healthy else CRITICAL,
                            label=unit_label(decl.unit), weight=spec.weight, priority=spec.priority)
    return out


class EndpointPublisher:
    """Implements the agent's UnitObserver: `units_desired(files)` and `unit_states(states)`."""

    def __init__(self, records: ServiceRecords, machine_id: str, host: str, lease: Callable[[], int | None],
                 *, hostname: str | None = None, concurrency: int = 16):
        self.records = records
        self.machine_id = machine_id
        self.host = host or "127.0.0.1"
        self.lease = lease
        self.hostname = hostname or socket.gethostname()
        self.runner = CheckRunner(concurrency)
        self._files: dict[str, UnitFile] = {}
        self._declared: dict[tuple[str, str], Declared] = {}
        self._active: dict[str, bool] = {}
        self._health: dict[tuple[str, str], Health] = {}
        self._checks: dict[tuple[str, str], tuple[Declared, asyncio.Task]] = {}
        self._published: dict[tuple[str, str], Endpoint] = {}
        self._published_lease: int | None = None
        self._dirty = asyncio.Event()
        self.writes = 0

    # ------------------------------------------------------------------ the agent's interface

    def units_desired(self, files: Mapping[str, UnitFile]) -> None:
        """The units this machine runs now (name -> unit file)."""
        files = {n: f for n, f in files.items() if has_services(f)}
        if files == self._files:
            return
        self._files = files
        self._declared = declared_services(files, self.hostname, self.host)
        self._active = {n: a for n, a in self._active.items() if n in files}
        self._dirty.set()

    def unit_states(self, states: Iterable) -> None:
        """systemd states seen by the agent (objects with .name and .active_state)."""
        for st in states:
            if st.name not in self._files:
                continue
            active = st.active_state == "active"
            if self._active.get(st.name) != active:
                self._active[st.name] = active
                if not active:  # a stopped unit starts over: rise counts from zero again
                    for key in [k for k in self._health if k[0] == st.name]:
                        del self._health[key]
                self._dirty.set()

    # ------------------------------------------------------------------ checks

    def _update_checks(self) -> None:
        wanted = {key: decl for key, decl in self._declared.items()
                  if decl.spec.check is not None and self._active.get(decl.unit)}
        for key, (decl, task) in list(self._checks.items()):
            if wanted.get(key) != decl:
                task.cancel()
                del self._checks[key]
                self._health.pop(key, None)
        for key, decl in wanted.items():
            if key not in self._checks:
                self._checks[key] = (decl, asyncio.create_task(self._check_loop(key, decl), name=f"check {key}"))

    async def _check_loop(self, key: tuple[str, str], decl: Declared) -> None:
        check = decl.spec.check
        while True:
            ok, reason = await self.runner.probe(check)
            before = self._health.get(key, Health())
            after = next_health(before, ok, check.rise, check.fall, reason)
            self._health[key] = after
            if after.healthy != before.healthy or not before.checked:
                if after.healthy != before.healthy:
                    log.info("service %s of %s: check %s%s", decl.spec.name, decl.unit,
                             "passes" if after.healthy else "fails", f" ({reason})" if reason else "")
                self._dirty.set()
            await asyncio.sleep(check.interval)

    # ------------------------------------------------------------------ publishing

    async def sync(self) -> None:
        self._update_checks()
        lease = self.lease()
        if lease is None:
            return
        if lease != self._published_lease:
            self._published = {}  # the old lease took our records with it
        wanted = wanted_endpoints(self._declared, self._active, self._health, self.machine_id, self.host)
        gone = [ep for key, ep in self._published.items() if key not in wanted or wanted[key].key_parts != ep.key_parts]
        changed = [ep for key, ep in wanted.items() if self._published.get(key) != ep]
        if gone:
            await self.records.withdraw(gone)
            for ep in gone:
                log.info("service %s: withdrew %s:%d (%s)", ep.service, ep.host, ep.port, ep.unit)
        if changed:
            await self.records.publish(changed, lease)
            for ep in changed:
                log.info("service %s: published %s:%d (%s, %s)", ep.service, ep.host, ep.port, ep.unit, ep.health)
        self.writes += bool(gone) + bool(changed)
        self._published = dict(wanted)
        self._published_lease = lease

    async def _forget_stale(self) -> None:
        """Records of this machine left by a previous fleetd (same lease adopted): withdraw them."""
        mine = [ep for ep in await self.records.endpoints() if ep.machine_id == self.machine_id]
        if mine:
            await self.records.withdraw(mine)

    async def run(self) -> None:
        started = False
        try:
            while True:
                try:
                    if not started:
                        await self._forget_stale()
                        started = True
                    self._dirty.clear()
                    await self.sync()
                except RegistryError as exc:
                    log.warning("publishing service endpoints: %s", exc)  # the diff is retried
                    await asyncio.sleep(1.0)
                    continue
                try:  # asyncio.timeout: 3.11's wait_for can swallow a cancellation
                    async with asyncio.timeout(5.0):  # also notices a new lease
                        await self._dirty.wait()
                except TimeoutError:
                    pass
        finally:
            for _, task in self._checks.values():
                task.cancel()
            await asyncio.gather(*(t for _, t in self._checks.values()), return_exceptions=True)
            await self.runner.close()
