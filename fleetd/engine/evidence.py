"""Gathering the evidence that lets a lone lost machine's units move without the settle time
(the imperative shell of fleetd/engine/hold.py's `lone_loss_proven`).

When exactly one machine has vanished (`Hold.ask`), the engine asks, at most every ASK_AGAIN
seconds until the proof is made or the settle time is over, about every machine registered
now: etcd for its lease (LeaseTimeToLive, through the registry) and its agent for how long it
has been in touch with etcd (`GET /peer/v1/quiet`, fleetd/api/peer.py). Whatever does not
answer within EVIDENCE_TIMEOUT, or a cluster of more than MAX_MACHINES machines, proves
nothing: the settle time applies as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Mapping

from fleetd.engine.hold import HoldState, Liveness
from fleetd.errors import RegistryError
from fleetd.model import Machine

log = logging.getLogger(__name__)

MAX_MACHINES = 128  # one lease read and one question per machine: beyond this, settle
EVIDENCE_TIMEOUT = 1.0  # seconds for all the answers
ASK_AGAIN = 1.0  # seconds: a healthy machine whose keep-alive was late has renewed its lease since

AskQuiet = Callable[[Mapping[str, str]], Awaitable[Mapping[str, float | None]]]


class LoneLossEvidence:
    def __init__(self, registry, ask_quiet: AskQuiet):
        self.registry = registry
        self.ask_quiet = ask_quiet
        self._asked: tuple[str, float, float] | None = None  # (machine, when it vanished, when asked)

    async def gather(self, lost: str, state: HoldState, machines: Mapping[str, Machine]) -> dict[str, Liveness] | None:
        """The evidence about `machines` (those registered now) after `lost` vanished; None if
        it was gathered for this vanishing less than ASK_AGAIN seconds ago or cannot be."""
        vanished_at, now = state.vanished_at.get(lost, 0.0), time.monotonic()
        if self._asked is not None and self._asked[:2] == (lost, vanished_at) and now - self._asked[2] < ASK_AGAIN:
            return None
        self._asked = (lost, vanished_at, now)
        others = {m: machine for m, machine in machines.items() if m != lost}
        if len(others) > MAX_MACHINES:
            return None
        asked_at = time.monotonic()
        try:
            async with asyncio.timeout(EVIDENCE_TIMEOUT):
                leases, quiet = await asyncio.gather(
                    self.registry.machine_leases(others, MAX_MACHINES),
                    self.ask_quiet({m: machine.public_ip or "" for m, machine in others.items()}))
        except (RegistryError, TimeoutError) as exc:
            log.info("engine: no evidence about the machines after %s vanished (%s): its units move after the settle time",
                     lost[:8], exc or type(exc).__name__)
            return None
        leases = leases or {}
        return {m: Liveness(asked_at, leases[m][0], leases[m][1], quiet.get(m)) if m in leases
                else Liveness(asked_at, quiet_for=quiet.get(m)) for m in others}
