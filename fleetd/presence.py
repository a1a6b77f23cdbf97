"""Machine presence: the machine record under an etcd lease, kept alive at ttl/3.

Tracks when the lease was last confirmed alive, so that the agent can tell when its lease must
have expired while it was cut off from etcd (and stop its units: no unit runs twice).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from fleetd.errors import DuplicateMachine, RegistryError
from fleetd.model import Machine
from fleetd.registry import Registry

log = logging.getLogger(__name__)


class Presence:
    def __init__(self, registry: Registry, machine: Machine, ttl: float, state_dir: Path):
        self.registry = registry
        self.machine = machine
        self.ttl = max(2.0, ttl)
        self.lease_id: int | None = None
        self.last_alive = 0.0  # monotonic time the lease was last known alive
        self.lost = asyncio.Event()  # set when the lease must have expired
        self.registered = asyncio.Event()
        self._lease_file = state_dir / "machine-lease"

    def _saved_lease(self) -> int | None:
        try:
            return int(self._lease_file.read_text().strip(), 16)
        except (OSError, ValueError):
            return None

    def _save_lease(self, lease_id: int) -> None:
        try:
            self._lease_file.parent.mkdir(parents=True, exist_ok=True)
            self._lease_file.write_text(f"{lease_id:x}\n")
        except OSError as exc:
            log.warning("cannot save lease ID to %s: %s", self._lease_file, exc)

    async def register(self, *, wait_duplicate: float = 0.0) -> None:
        """Register, adopting this machine's previous lease after a fleetd restart.

        A machine ID held by another live fleetd is refused; with wait_duplicate > 0 we wait up
        to that long for the other record to expire before giving up.
        """
        deadline = time.monotonic() + wait_duplicate
        while True:
            lease = await self.registry.grant_lease(self.ttl)
            try:
                in_use = await self.registry.register_machine(self.machine, lease, adopt_lease=self._saved_lease())
            except DuplicateMachine:
                await self.registry.revoke_lease(lease)
                if time.monotonic() >= deadline:
                    raise
                log.error("machine ID %s is registered by another fleetd; waiting for it to expire", self.machine.id)
                await asyncio.sleep(1.0)
                continue
            if in_use != lease:
                await self.registry.revoke_lease(lease)
                log.info("adopted lease %x of the previous fleetd on this machine", in_use)
            self.lease_id = in_use
            self._save_lease(in_use)
            self.last_alive = time.monotonic()
            self.lost.clear()
            self.registered.set()
            log.info("machine %s registered (ip %s, lease %x, ttl %ss)", self.machine.id, self.machine.public_ip or "-", in_use, self.ttl)
            return

    def lease_expired_locally(self) -> bool:
        return time.monotonic() - self.last_alive > self.ttl

    def _until_expiry(self) -> float:
        """Seconds until the lease must have expired in etcd (0 when it must have already)."""
        return max(0.0, self.last_alive + self.ttl - time.monotonic())

    async def run(self) -> None:
        """Keep the lease alive; re-register when it was lost.

        `lost` is set as soon as the lease must have expired: no sleep or keep-alive attempt
        runs past that moment, so that the agent stops its units about when the engine may
        start them elsewhere (not up to one more keep-alive round later). It is cleared again
        if a later keep-alive finds the lease still alive after all (etcd renews every lease
        when it elects a new raft leader, and a keep-alive whose answer was lost renews it too):
        the machine never left, so the agent carries on with it and starts its units again.
        """
        interval = self.ttl / 3
        # one attempt may take at most this long: a member that does not answer within the
        # request timeout makes the connection move on to the next one, and we try again
        attempt = min(interval, max(1.0, self.registry.settings.request_timeout or 1.0))
        delay = interval
        while True:
            lost = self.lost.is_set()
            await asyncio.sleep(0.5 if lost else min(delay, self._until_expiry()))
            try:
                timeout = attempt if lost else min(attempt, self._until_expiry())
                # the deadline goes to etcd's client (a timed-out call makes it try another
                # member); wait_for is only the safety net
                remaining = await asyncio.wait_for(self.registry.keepalive(self.lease_id, timeout=timeout),
                                                   timeout=timeout + 0.25)
                if remaining > 0:
                    self.last_alive = time.monotonic()
                    delay = interval
                    if self.lost.is_set():
                        log.warning("machine lease %x is alive after all; carrying on with it", self.lease_id)
                        self.lost.clear()
                        self.registered.set()
                    continue
                log.warning("machine lease %x expired; registering again", self.lease_id)
                self.lost.set()
                self.registered.clear()
                await self.register(wait_duplicate=self.ttl * 2)
            except (RegistryError, asyncio.TimeoutError) as exc:
                delay = min(interval, 0.25)  # retry soon, most likely with another etcd member
                if self.lease_expired_locally() and not self.lost.is_set():
                    log.error("cut off from etcd for longer than the TTL (%ss): %s", self.ttl, exc or "timed out")
                    self.lost.set()
                    self.registered.clear()
                else:
                    log.warning("lease keepalive failed: %s", exc or "timed out")

    async def update_machine(self, machine: Machine) -> None:
        self.machine = machine
        if self.lease_id is not None:
            await self.registry.update_machine(machine, self.lease_id)
