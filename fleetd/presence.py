"""Machine presence: the machine record under an etcd lease, kept alive (fleetd/lease_timing.py).

Tracks until when the lease is known to be alive (the moment the last answered keep-alive was
sent, plus its TTL), so that the agent can tell when its lease may have expired while it was
cut off from etcd (and stop its units: no unit runs twice), and tries hard to confirm the
lease before that moment after a short cut (no needless stop and restart of its units).

Before it gives up its units it asks its peers whether they reach etcd (fleetd/disruption.py,
fleetd/api/peer.py): when etcd is out for a disrupted fraction of the machines, it holds on
(`holding`) and keeps every unit running instead, asking again every PEER_POLL seconds; the
first peer that reaches etcd makes it fence after all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Awaitable, Callable, Sequence

from fleetd.disruption import (PEER_POLL, PEER_TIMEOUT, FenceVerdict, PeerAnswer, answer_for, fence_decision,
                               hold_until, settle_seconds)
from fleetd.errors import DuplicateMachine, RegistryError
from fleetd.lease_timing import KeepaliveTiming, lease_deadline, lease_ttl_seconds
from fleetd.model import Machine
from fleetd.registry import Registry

log = logging.getLogger(__name__)

BACKGROUND_GRACE = 5.0  # seconds run() waits at its end for cancelled keep-alive attempts
KNOWN_FIRST_REFRESH = 1.0  # seconds after registering before the list of peers is read again


def known_refresh_max(ttl: float) -> float:
    """Seconds between two reads of the peers' list (machines/) while etcd answers."""
    return max(10.0, 2 * ttl)


def round_endpoints(endpoints: Sequence[str], round_no: int, urgent: bool) -> list[str]:
    """The etcd members a round of keep-alive attempts goes to, each on a new connection: every
    member while the lease is at stake (`urgent`: before its deadline, or a peer reaches etcd
    again), else one member per round in turn. Holding on through an outage, or fenced already,
    every member on every round would pile up new TLS connections in the frozen members'
    queues; on resuming they have to handshake them all while new ones keep arriving, and a
    loaded machine's etcd took a minute or more to answer again (issue 13, test_outage[60])."""
    if urgent or not endpoints:
        return list(endpoints)
    return [endpoints[round_no % len(endpoints)]]


class Presence:
    def __init__(self, registry: Registry, machine: Machine, ttl: float, state_dir: Path):
        self.registry = registry
        self.machine = machine
        self.ttl = float(lease_ttl_seconds(ttl))  # what etcd grants the lease
        self.timing = KeepaliveTiming.for_ttl(self.ttl, registry.settings.request_timeout)
        self.lease_id: int | None = None
        self.last_alive = 0.0  # monotonic time the last keep-alive etcd answered was sent
        self.expires_at = 0.0  # monotonic time before which etcd cannot expire the lease
        self.lost = asyncio.Event()  # set when the lease may have expired
        self.registered = asyncio.Event()
        self._lease_file = state_dir / "machine-lease"
        self._background: set[asyncio.Task] = set()
        # telling an etcd outage from a cut-off machine (fleetd/disruption.py)
        self.peer_client = None  # fleetd.api.peer.PeerClient; None: no peer is ever asked
        self.known: dict[str, str] = {}  # machine ID -> public IP, as last seen in machines/
        self.cut_off_since: float | None = None  # monotonic; keep-alives unanswered since then
        self.last_cut_off = time.monotonic()  # when this machine was last cut off (or unregistered)
        self.holding = False  # the lease may have expired, but etcd is out: units keep running
        self.verdict: tuple[float, FenceVerdict] | None = None  # (when, the last decision)
        # since the probe started: when the last round that said hold was asked, and when a
        # peer that reaches etcd was first heard (monotonic; fleetd/disruption.py's hold_until)
        self.last_hold_asked: float | None = None
        self.reach_heard: float | None = None
        self._probe: asyncio.Task | None = None
        self._rounds: set[asyncio.Task] = set()
        self._known_refreshed = 0.0
        self._known_every = KNOWN_FIRST_REFRESH  # seconds; grows to known_refresh_max() after registering
        self._answer: tuple[float, PeerAnswer] | None = None  # (when, what a peer was told)
        self._answering: asyncio.Task | None = None

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
            sent = time.monotonic()
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
            granted = self.ttl
            if in_use != lease:
                await self.registry.revoke_lease(lease)
                # its TTL is the previous fleetd's (its fleet.conf may have had another agent_ttl)
                sent = time.monotonic()
                granted = await self.registry.keepalive(in_use)
                if granted <= 0:
                    continue  # it has just expired: register anew
                log.info("adopted lease %x of the previous fleetd on this machine", in_use)
            self.lease_id = in_use
            self._save_lease(in_use)
            self.last_alive, self.expires_at = sent, lease_deadline(sent, granted)
            self.cut_off_since = None
            self.last_cut_off = time.monotonic()
            self._end_probe()
            self.lost.clear()
            self.registered.set()
            # machines that start together register a moment apart: read the list again soon
            # (an outage may strike before the next regular refresh), then less and less often
            self._known_every = KNOWN_FIRST_REFRESH
            await self.refresh_known()
            log.info("machine %s registered (ip %s, lease %x, ttl %ss)", self.machine.id, self.machine.public_ip or "-", in_use, self.ttl)
            return

    def lease_expired_locally(self) -> bool:
        """True when etcd may have expired the lease (no answered keep-alive proves otherwise)."""
        return time.monotonic() >= self.expires_at

    def _set_lost(self) -> None:
        self._end_probe()
        self.lost.set()
        self.registered.clear()

    # ------------------------------------------------------------------ etcd outage or cut off?

    async def refresh_known(self) -> None:
        """The machines (and their addresses) to ask when etcd cannot be reached."""
        try:
            machines = await self.registry.list_machines()
        except RegistryError as exc:
            log.debug("cannot list machines: %s", exc)
            return
        self.known = {m.id: m.public_ip for m in machines}
        self._known_refreshed = time.monotonic()

    async def decide(self) -> FenceVerdict:
        """Ask the peers and decide (fleetd/disruption.py); the verdict is kept unless a newer
        round finished first. A hold verdict moves `last_hold_asked` on; a peer that reaches
        etcd sets `reach_heard` (the first time)."""
        me = self.machine.id
        asked = time.monotonic()
        peers = {m: ip for m, ip in self.known.items() if m != me}
        answers = await self.peer_client.ask(peers) if self.peer_client is not None and peers else {}
        verdict = fence_decision(me, set(self.known) | {me}, answers)
        if self.verdict is None or self.verdict[0] <= asked:
            self.verdict = (asked, verdict)
        if not verdict.fence:
            self.last_hold_asked = max(asked, self.last_hold_asked or asked)
        elif verdict.peer_reaches and self.reach_heard is None:
            self.reach_heard = time.monotonic()
        return verdict

    def hold_until(self) -> float | None:
        """Until when the units may keep running past the lease deadline (None: no round said
        hold since the probe started)."""
        if self.last_hold_asked is None:
            return None
        return hold_until(self.last_hold_asked, self.reach_heard, self.ttl)

    async def answer_peer(self) -> PeerAnswer:
        """What a peer asking whether this machine reaches etcd is told: cut off when not
        registered or when keep-alives have gone unanswered for MIN_CUT seconds; otherwise
        a keep-alive sent now (at most one every PEER_POLL, whoever asks) decides."""
        now = time.monotonic()
        if self.lease_id is None or answer_for(self.cut_off_since, self.registered.is_set(), now) is PeerAnswer.CUT_OFF:
            return PeerAnswer.CUT_OFF
        if self._answer is not None and now - self._answer[0] < PEER_POLL:
            return self._answer[1]
        if self._answering is None or self._answering.done():
            self._answering = asyncio.ensure_future(self._check_etcd())
        return await asyncio.shield(self._answering)

    def quiet_for(self) -> float:
        """Seconds this machine has been in touch with etcd without a gap: since it registered
        or its keep-alives were last unanswered (0 while they are, or while unregistered). The
        engine asks it (fleetd/engine/hold.py: lone_loss_proven): a machine quiet for
        quiet_seconds has told no peer to hold on for that long."""
        if self.lease_id is None or not self.registered.is_set() or self.cut_off_since is not None:
            return 0.0
        return max(0.0, time.monotonic() - self.last_cut_off)

    async def _check_etcd(self) -> PeerAnswer:
        sent = time.monotonic()
        timeout = PEER_TIMEOUT / 3
        try:
            granted = await asyncio.wait_for(self.registry.keepalive(self.lease_id, timeout=timeout), timeout + 0.1)
        except (RegistryError, asyncio.TimeoutError):
            answer = PeerAnswer.CUT_OFF
            self.last_cut_off = time.monotonic()  # a peer is told so: not quiet (quiet_for)
        else:
            answer = PeerAnswer.REACHES_ETCD
            if granted > 0:
                deadline = lease_deadline(sent, granted)
                if deadline > self.expires_at and not self.lost.is_set():
                    self.last_alive, self.expires_at = sent, deadline
        self._answer = (time.monotonic(), answer)
        return answer

    def _start_probe(self) -> None:
        if self._probe is None or self._probe.done():
            self.verdict = None
            self.last_hold_asked = self.reach_heard = None
            self._probe = asyncio.create_task(self._run_probe(), name="peer-probe")

    def _end_probe(self) -> None:
        if self._probe is not None and self._probe is not asyncio.current_task():
            self._probe.cancel()
        self._probe = None
        for task in self._rounds:
            task.cancel()
        self._rounds.clear()
        if self.holding:
            self.holding = False

    async def _run_probe(self) -> None:
        """Start a round of questions every PEER_POLL seconds (rounds overlap: a fresh verdict
        whatever the peers' answer times) from shortly before the lease deadline on, for as
        long as etcd cannot be reached; while holding on, fence when `hold_until` passes (a
        peer reaches etcd and this machine's keep-alive still does not get through, or no
        round said hold for too long)."""
        while True:
            task = asyncio.create_task(self._one_round())
            self._rounds.add(task)
            task.add_done_callback(self._rounds.discard)
            wake = time.monotonic() + PEER_POLL
            while time.monotonic() < wake:
                until = self.hold_until() if self.holding else None
                if until is not None and time.monotonic() >= until:
                    verdict = self.verdict[1] if self.verdict else None
                    log.error("%s; stopping non-global units now", verdict.reason if verdict and verdict.fence else
                              "no peer confirmed the etcd outage in time")
                    self.holding = False
                    self._set_lost()
                    return
                await asyncio.sleep(max(0.0, min(wake, until if until is not None else wake) - time.monotonic()))

    async def _one_round(self) -> None:
        reached = self.reach_heard is not None
        verdict = await self.decide()
        if not self.holding or not verdict.fence:
            return
        until = self.hold_until()
        left = max(0.0, until - time.monotonic()) if until is not None else 0.0
        if verdict.peer_reaches and not reached:
            log.warning("%s; fencing in %.1fs unless etcd answers this machine too", verdict.reason, left)
        elif not verdict.peer_reaches:
            log.warning("%s; holding on for %.1fs more unless a peer confirms the etcd outage", verdict.reason, left)

    def _deadline_passed(self, error: BaseException | None) -> None:
        """The lease may have expired: hold on (etcd is out) or fence (this machine is cut off)."""
        until = self.hold_until()
        verdict = self.verdict[1] if self.verdict else None
        if until is not None and time.monotonic() < until and self.reach_heard is None:
            log.error("cut off from etcd for longer than the TTL (%ss): %s; %s", self.ttl,
                      error or "no answer", verdict.reason if verdict and not verdict.fence else
                      "a recent round of questions found etcd out for most machines")
            self.holding = True
            return
        log.error("cut off from etcd for longer than the TTL (%ss): %s; %s", self.ttl, error or "no answer",
                  verdict.reason if verdict else "no verdict from the peers in time")
        self._set_lost()

    async def run(self) -> None:
        """Keep the lease alive; re-register when it was lost.

        `lost` is set as soon as the lease may have expired in etcd (see
        `_keepalive_until_answered`), so that the agent stops its units no later than the
        moment the engine may start them elsewhere. It is cleared again if a later keep-alive
        finds the lease still alive after all (etcd renews every lease when it elects a new
        raft leader, and a keep-alive whose answer was lost renews it too): the machine never
        left, so the agent carries on with it and starts its units again.
        """
        try:
            while True:
                if not self.lost.is_set():
                    due = min(self.last_alive + self.timing.interval, self.expires_at)
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                if time.monotonic() - self._known_refreshed > self._known_every:
                    self._known_every = min(known_refresh_max(self.ttl), 2 * self._known_every)
                    await self.refresh_known()
                sent, granted = await self._keepalive_until_answered()
                if granted > 0:
                    self._confirmed(sent, granted)
                    continue
                if self.holding:
                    await self._register_after_outage()
                    continue
                else:
                    log.warning("machine lease %x expired; registering again", self.lease_id)
                    self._set_lost()
                try:
                    await self.register(wait_duplicate=self.ttl * 2)
                except RegistryError as exc:
                    log.error("registering machine %s again failed: %s", self.machine.id, exc)
                    await asyncio.sleep(self.timing.lost_retry)
        finally:
            for task in self._background:
                task.cancel()
            # bounded: a keep-alive attempt stuck in etcd's client (seen once after etcd was
            # frozen and resumed) must not keep fleetd from shutting down
            if self._background:
                _, pending = await asyncio.wait(set(self._background), timeout=BACKGROUND_GRACE)
                if pending:
                    log.warning("%d keep-alive attempts still running %.0fs after cancellation; left behind",
                                len(pending), BACKGROUND_GRACE)

    async def _register_after_outage(self) -> None:
        """etcd is back but expired the lease while this machine held on (a raft leader that
        stayed leader through the outage does). The peers no longer matter (etcd answers this
        machine too); the engine holds a vanished machine's units for `settle_seconds` at
        least (all of them if many vanished): register again before that, keeping the units,
        or fence."""
        budget = settle_seconds(self.ttl) - 0.5
        log.warning("machine lease %x expired during the etcd outage; registering again within %.1fs, "
                    "units keep running", self.lease_id, budget)
        self._end_probe()
        self.registered.clear()
        deadline = time.monotonic() + budget
        error: BaseException | None = None
        # an attempt that fails at once (the shared connection still reconnecting after the
        # outage, while a keep-alive on a new connection got through) is tried again: the
        # budget, not the first error, decides (soak seed 13, session 4: a 3.6 s freeze
        # restarted 12 units in place on the first "failed to connect")
        while (left := deadline - time.monotonic()) > 0:
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that
                # arrives as the call completes, and this loop then ran on after fleetd's stop
                async with asyncio.timeout(left):
                    await self.register(wait_duplicate=0)
                return
            except TimeoutError:
                error = error or TimeoutError("timed out")
                break
            except RegistryError as exc:
                error = exc
                await asyncio.sleep(min(self.timing.retry, max(0.0, deadline - time.monotonic())))
        log.error("could not register again within %.1fs (%s); stopping non-global units", budget,
                  error or "timed out")
        self._set_lost()
        await asyncio.sleep(self.timing.lost_retry)

    def _confirmed(self, sent: float, granted: int) -> None:
        deadline = lease_deadline(sent, granted)
        if deadline > self.expires_at:
            self.last_alive, self.expires_at = sent, deadline
        if self.holding:
            log.warning("machine lease %x is alive after the etcd outage; units kept running", self.lease_id)
        self._end_probe()
        if self.lost.is_set() and not self.lease_expired_locally():
            log.warning("machine lease %x is alive after all; carrying on with it", self.lease_id)
            self.lost.clear()
            self.registered.set()

    async def _keepalive_until_answered(self) -> tuple[float, int]:
        """Keep-alive attempts until etcd answers one: (when it was sent, the TTL answered).

        The first attempt goes over the registry's shared connection. If it is not answered
        within `timing.hedge`, a round of attempts starts every `timing.retry` until one is
        answered: one over the shared connection (one that times out moves that connection
        to the next etcd member) and one to every etcd member on a new connection of its own
        (after a network cut heals, an existing connection may still be waiting for TCP's
        retransmission back-off; a new one gets through at once). `lost` is set when the
        lease may have expired meanwhile, and rounds go on every `timing.lost_retry`.
        """
        timing, lease = self.timing, self.lease_id
        attempts: dict[asyncio.Task, float] = {}  # attempt -> monotonic time it was sent
        shared: set[asyncio.Task] = set()

        def attempt(call: Callable[[], Awaitable[int]]) -> asyncio.Task:
            sent = time.monotonic()
            # the timeout goes to etcd's client; wait_for is only the safety net
            task = asyncio.ensure_future(asyncio.wait_for(call(), timing.attempt_timeout + 0.25))
            attempts[task] = sent
            return task

        def over_shared() -> None:
            shared.add(attempt(lambda: self.registry.keepalive(lease, timeout=timing.attempt_timeout)))

        def direct(endpoint: str) -> Callable[[], Awaitable[int]]:
            return lambda: self.registry.keepalive_direct(endpoint, lease, timing.attempt_timeout)

        started = time.monotonic()
        over_shared()
        next_round = started + timing.hedge
        rounds = 0
        error: BaseException | None = None
        try:
            while True:
                now = time.monotonic()
                if not attempts and not rounds:
                    next_round = now  # the first attempt failed at once: no need to wait
                probe_at = self.expires_at - (PEER_TIMEOUT + PEER_POLL)
                if self.lost.is_set() or self.holding:
                    wake = next_round
                elif self._probe is None and self.peer_client is not None:
                    wake = min(next_round, max(probe_at, now))
                else:
                    wake = min(next_round, self.expires_at)
                timeout = max(0.0, wake - now)
                if attempts:
                    done, _ = await asyncio.wait(attempts, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                else:  # every attempt of the last round failed already
                    done = set()
                    await asyncio.sleep(timeout)
                for task in done:
                    sent = attempts.pop(task)
                    try:
                        granted = task.result()
                    except (RegistryError, asyncio.TimeoutError) as exc:
                        error = exc
                        if self.cut_off_since is None:
                            self.cut_off_since = started
                        continue
                    if self.cut_off_since is not None:
                        self.last_cut_off = time.monotonic()
                    self.cut_off_since = None
                    if rounds:
                        now = time.monotonic()
                        log.warning("machine lease %x confirmed after %.2fs of retries, %.2fs %s its deadline",
                                    lease, now - started, abs(self.expires_at - now),
                                    "before" if now < self.expires_at else "after")
                    return sent, granted
                now = time.monotonic()
                if (not self.lost.is_set() and not self.holding and self.peer_client is not None
                        and now >= probe_at):
                    self._start_probe()
                if not self.lost.is_set() and not self.holding and now >= self.expires_at:
                    self._deadline_passed(error)
                if now >= next_round:
                    if self.cut_off_since is None:
                        self.cut_off_since = started
                    if rounds == 0:
                        log.warning("lease keep-alive unanswered for %.2fs (%s); trying every etcd member",
                                    now - started, error or "no answer yet")
                    rounds += 1
                    over_shared()
                    urgent = not (self.lost.is_set() or self.holding) or self.reach_heard is not None
                    for endpoint in round_endpoints(self.registry.settings.endpoints, rounds, urgent):
                        attempt(direct(endpoint))
                    next_round = now + (timing.lost_retry if self.lost.is_set() else timing.retry)
        finally:
            for task in attempts:
                if task in shared:  # left to finish: its timeout moves the shared connection on
                    self._background.add(task)
                else:
                    task.cancel()
                task.add_done_callback(self._retired)

    def _retired(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failed attempt that nobody waited for is no error

    async def update_machine(self, machine: Machine) -> None:
        self.machine = machine
        if self.lease_id is not None:
            await self.registry.update_machine(machine, self.lease_id)
