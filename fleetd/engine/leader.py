"""The engine's imperative shell: leader election, watches, and applying the pure decisions.

Event-driven: a watch on units (job/), machines (machines/) and the schedule (schedule/) from the
snapshot's revision wakes the loop and feeds the leader's in-memory view (fleetd.engine.view), so
a pass reads no range; whole ranges are re-read only when leading starts, after a compaction or
a broken watch, and at the periodic resync (the safety net: every FULL_READ_EVERY quiet
engine_reconcile_intervals; the other quiet intervals run a pass on the view). A pass
whose only news are new plain units is planned incrementally (fleetd.engine.incremental), with
the same decisions as reconcile(). Every schedule write is fenced on this machine still holding
the leader key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from fleetd.constraints import RequirementsCache
from fleetd.engine.hold import Hold, HoldState, policy_for, restrain, with_ghosts
from fleetd.engine.incremental import Changes, IncrementalPlanner
from fleetd.engine.scheduler import reconcile
from fleetd.engine.view import ClusterView
from fleetd.errors import RegistryError
from fleetd.model import ClusterSnapshot, DesiredState
from fleetd.registry import NotLeader, Registry, WatchCompacted

log = logging.getLogger(__name__)

# The periodic safety net re-reads whole ranges every this many quiet intervals (30 s at fleet's
# default engine_reconcile_interval of 2 s); the other quiet intervals run a pass on the
# watch-fed view. A whole read of a 10,000-unit cluster is ~2 MB from etcd and ~0.1-0.3 s of
# the engine's CPU: every 2 s it was what the engine and etcd spent while the agents of a
# 1,000 x 10,000 run were still starting their units.
FULL_READ_EVERY = 15

# A burst of unit submissions (job/ news from two or more transactions since the previous pass,
# e.g. 10,000 units submitted in 167 transactions while a pass ran) is planned when the job news
# pauses for BURST_QUIET (the engine's own schedule writes coming back do not count), or
# BURST_MAX after the wait began, or, while a large submission is still in full flow (at least
# BURST_FLOW units of job news in the last BURST_QUIET), BURST_LIMIT after it: one pass then
# places what would have taken a pass per transaction or two, and each machine gets its units
# in one write (one agent pass, fewer etcd transactions) instead of one per pass that spread a
# part of the burst over every machine. News from one transaction (a `fleetctl start` of up to
# 59 units, the engine's own writes coming back) is planned at once; a trickle of small
# submissions waits at most BURST_MAX (fleet's engine plans every 2 s). One transaction of
# BURST_FLOW units or more (the first of a large submission, fleetd.registry's create_units
# writes 60 a transaction) is waited on as a burst too.
BURST_QUIET = 0.1
BURST_MAX = 1.0
BURST_FLOW = 60
BURST_LIMIT = 5.0
BURST_ASK = 1.0  # seconds etcd has to say whether a burst's jobs are still being written
BURST_FLOW_QUIET = 3  # times BURST_QUIET: the quiet spell that ends a burst that was in full flow
# A client that submits a full transaction of units or more marks the submission's end
# (Registry.create_units and set_desired_state write the `submitted` key after their last
# batch's answer): when the
# engine sees that mark after the last job news, and etcd holds no job written after that news
# (no other submission still on its way), the burst is planned at once, without the quiet spell.

WRITE_LOG = 50  # passes kept in EngineStats.write_log


@dataclass
class EngineStats:
    passes: int = 0
    skipped_passes: int = 0  # inputs unchanged since a pass that decided nothing
    placements: int = 0
    unplacements: int = 0
    last_pass_seconds: float = 0.0
    snapshot_seconds: float = 0.0  # total time reading snapshots
    reconcile_seconds: float = 0.0  # total (wall) time in the pure reconcile()
    reconcile_cpu_seconds: float = 0.0  # the same in CPU time of the engine's thread
    apply_seconds: float = 0.0  # total time writing decisions
    transactions: int = 0  # schedule-writing transactions
    last_write_at: float = 0.0  # time.monotonic() when the last decisions were written
    planned_passes: int = 0  # passes decided by the incremental planner (no reconcile())
    full_reads: int = 0  # whole-range reads (start, compaction, broken watch, periodic resync)
    view_passes: int = 0  # passes on the watch-fed view (no range read)
    last_engine_seconds: float = 0.0  # view update + decision + write of the last pass that wrote
    last_decide_seconds: float = 0.0  # the decision alone (planner or reconcile()) of that pass
    marked_bursts: int = 0  # burst waits ended by a submission's end mark (see BURST_FLOW_QUIET)
    last_settled_at: float = 0.0  # time.monotonic() when the last burst wait ended
    settled_passes: int = 0  # passes that waited for a burst of submissions to pause (BURST_QUIET)
    lagging_watch: int = 0  # burst waits that went on because etcd had job news the watch had not brought yet
    # (time.monotonic() at the start and the end of the write, placements, unplacements) of the
    # last WRITE_LOG passes that wrote
    write_log: list = field(default_factory=list)


def global_targets(snapshot: ClusterSnapshot,
                   cache: RequirementsCache | None = None) -> dict[str, tuple[str, DesiredState]]:
    """The global/ mirror agents read: every global unit that is not inactive."""
    cache = cache if cache is not None else RequirementsCache()
    return {
        name: (unit.hash, unit.desired_state)
        for name, unit in snapshot.units.items()
        if unit.desired_state is not DesiredState.INACTIVE and cache.info(unit).is_global
    }


class Engine:
    def __init__(self, registry: Registry, machine_id: str, interval: float, lease_ttl: float | None = None,
                 machine_ttl: float = 5.0, burst_quiet: float = BURST_QUIET, burst_max: float = BURST_MAX,
                 burst_limit: float = BURST_LIMIT):
        self.registry = registry
        self.machine_id = machine_id
        self.interval = interval
        self.lease_ttl = lease_ttl or max(2.0, 5 * interval)
        self.is_leader = False
        self.stats = EngineStats()
        self._globals_written: dict[str, tuple[str, DesiredState]] | None = None
        self._lease: int | None = None
        self._cache = RequirementsCache()
        self._idle_inputs: tuple | None = None  # inputs of the last pass that wrote nothing
        # no stampede (fleetd/engine/hold.py): what vanished when, grace after gaining leadership
        self.hold_policy = policy_for(machine_ttl)
        self._hold_state = HoldState()
        self.hold = Hold()
        self.evidence = None  # fleetd.engine.evidence.LoneLossEvidence: a lone lost machine's units may move at once
        self._planner = IncrementalPlanner(self._cache)
        self._view: ClusterView | None = None
        self._events: list = []
        self.burst_quiet, self.burst_max, self.burst_limit = burst_quiet, burst_max, max(burst_max, burst_limit)

    async def run(self) -> None:
        while True:
            try:
                if await self._campaign():
                    await self._lead()
                else:
                    await self._follow()
            except asyncio.CancelledError:
                raise
            except NotLeader:
                log.warning("lost engine leadership")
            except RegistryError as exc:
                log.warning("engine: %s; retrying", exc)
                await asyncio.sleep(min(1.0, self.interval))
            finally:
                self.is_leader = False

    async def _campaign(self) -> bool:
        reg = self.registry
        self._lease = await reg.grant_lease(self.lease_ttl)
        if await reg.campaign(self.machine_id, self._lease):
            return True
        holder, lease = await reg.leader_lease()
        if holder == self.machine_id and lease != self._lease:
            # our own stale leadership from before a restart: no other fleetd has this ID
            await reg.revoke_lease(lease)
            if await reg.campaign(self.machine_id, self._lease):
                return True
        await reg.revoke_lease(self._lease)
        self._lease = None
        return False

    async def _follow(self) -> None:
        """Wait until the leader key disappears (watch), with the interval as a safety net."""
        reg = self.registry
        revision = await reg.current_revision()
        holder, _ = await reg.leader()
        if holder is None:
            return
        try:
            async with asyncio.timeout(max(self.lease_ttl, self.interval * 5)):
                async for event in reg.watch([reg.keys.engine_leader], revision + 1):
                    if event.value is None:
                        return
        except TimeoutError:
            return

    async def _lead(self) -> None:
        reg = self.registry
        self.is_leader = True
        self._globals_written = None
        self._idle_inputs = None
        self._hold_state = self._hold_state.gained_leadership(time.monotonic(), self.hold_policy)
        log.info("machine %s is the engine leader (lease ttl %ss); grace period of %.1fs for machines to register",
                 self.machine_id, self.lease_ttl, self.hold_policy.grace)
        keepalive = asyncio.create_task(self._keep_lease())
        dirty = asyncio.Event()
        watcher: asyncio.Task | None = None
        view = self._view = ClusterView(reg)
        self._planner.forget()
        resync = True
        quiet = 0  # quiet intervals since the last whole read
        try:
            while True:
                if keepalive.done():
                    keepalive.result()  # raises NotLeader / RegistryError
                started = time.monotonic()
                if watcher is not None and watcher.done():
                    resync = True
                if resync or not view.loaded:
                    quiet = 0
                    self._events = []
                    snapshot = await view.load()
                    self.stats.full_reads += 1
                else:
                    events, self._events = self._events, []
                    await view.apply(events)
                    snapshot = view.snapshot()
                    self.stats.view_passes += 1
                self.stats.snapshot_seconds += time.monotonic() - started
                wrote = await self.reconcile(snapshot, view.take_changes())
                self.stats.last_pass_seconds = time.monotonic() - started
                if wrote:
                    self.stats.last_engine_seconds = self.stats.last_pass_seconds
                if watcher is None or watcher.done():
                    if watcher is not None and watcher.done() and not watcher.cancelled():
                        exc = watcher.exception()
                        if exc is not None and not isinstance(exc, WatchCompacted):
                            log.warning("engine watch ended: %s", exc)
                    watcher = asyncio.create_task(self._watch(snapshot.revision + 1, dirty))
                wait = self.interval
                if self.hold.wake_at is not None:
                    wait = max(0.05, min(wait, self.hold.wake_at - time.monotonic() + 0.01))
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation
                # that arrives as the event is set, and the engine would then never stop
                try:
                    async with asyncio.timeout(wait):
                        await dirty.wait()
                    resync = False
                    if self._in_burst():
                        await self._settle(dirty, keepalive)
                        self.stats.last_settled_at = time.monotonic()
                except TimeoutError:
                    quiet += 1
                    resync = quiet >= FULL_READ_EVERY  # the periodic safety net: re-read everything
                dirty.clear()
        finally:
            keepalive.cancel()
            if watcher is not None:
                watcher.cancel()
            await asyncio.gather(keepalive, *( [watcher] if watcher else []), return_exceptions=True)

    def _in_burst(self) -> bool:
        """Job news from two or more transactions, or of BURST_FLOW units or more (a full
        transaction of a larger submission), waits for the next pass (see BURST_QUIET)."""
        jobs, revisions, count = self.registry.keys.jobs, set(), 0
        for event in self._events:
            if event.key.startswith(jobs):
                revisions.add(event.revision)
                count += 1
                if len(revisions) > 1 or count >= BURST_FLOW:
                    return True
        return False

    async def _settle(self, dirty: asyncio.Event, keepalive: asyncio.Task) -> None:
        """In a burst (see BURST_QUIET): wait until no job news came for burst_quiet seconds
        (at most burst_max in all, burst_limit while the submission is in full flow), or until
        the lease's keeper stops (the loop then raises its error). Meanwhile the news is folded
        into the view as it comes (decoding jobs, parsing bodies, each new unit's requirements
        and hash), so that the pass after the burst only plans and writes.

        A watch can lag behind etcd by more than the quiet spell (etcd holds back the events
        of a watcher that reads them slower than they are written, and sends them in
        catch-up rounds): when a large submission's news pauses, etcd is asked whether a job
        was written after the last job event seen; if so the news is still on its way, and
        the wait goes on (up to burst_limit)."""
        self.stats.settled_passes += 1
        began = last_news = time.monotonic()
        recent: list[tuple[float, int]] = []  # (when, units) of job news in the last quiet spell
        marked = 0  # revision of the last end-of-submission mark seen
        asked = -1  # job_revision etcd was last asked about after a mark
        flowed = False  # a large submission was in full flow
        seen = 0  # self._events before this index were counted already
        job_revision = 0  # of the last job event seen
        while not keepalive.done():
            dirty.clear()
            now = time.monotonic()
            news = self._events[seen:]
            jobs, job_revision = self._job_news(news, job_revision)
            marked = self._submission_end(news, marked)
            seen = len(self._events)
            if self._view is not None and self._view.loaded and self._events:
                events, self._events = self._events, []
                seen = 0  # what comes while folding is news for the next round
                for unit in await self._view.apply(events):
                    self._cache.info(unit)  # the pass after the burst finds them worked out
            if jobs:  # the quiet spell is counted from here: folding the news took time too
                last_news = time.monotonic()
                recent.append((now, jobs))
            recent = [(t, n) for t, n in recent if t > now - self.burst_quiet * BURST_FLOW_QUIET]
            flowing = sum(n for _, n in recent) >= BURST_FLOW
            flowed = flowed or flowing
            deadline = began + (self.burst_limit if flowing else self.burst_max)
            quiet = self.burst_quiet * (BURST_FLOW_QUIET if flowed else 1)
            if marked > job_revision and asked != job_revision:
                asked = job_revision  # a submission ended after the last job news: anything else on its way?
                if not await self._jobs_pending(job_revision, default=True):
                    self.stats.marked_bursts += 1
                    return
                continue
            remaining = min(deadline, last_news + quiet) - time.monotonic()
            if remaining <= 0:
                if flowed and time.monotonic() < began + self.burst_limit and await self._jobs_pending(job_revision):
                    self.stats.lagging_watch += 1
                    last_news = time.monotonic()
                    recent.append((last_news, BURST_FLOW))  # as good as news in full flow
                    continue
                return
            try:
                async with asyncio.timeout(remaining):
                    await dirty.wait()
            except TimeoutError:
                pass

    async def _jobs_pending(self, revision: int, default: bool = False) -> bool:
        """Whether etcd holds a job written after `revision` (`default` if it cannot tell
        within BURST_ASK seconds: by default the burst is then planned as it is)."""
        try:
            async with asyncio.timeout(BURST_ASK):
                return await self.registry.jobs_written_after(revision)
        except (RegistryError, TimeoutError) as exc:
            log.debug("engine: cannot tell whether jobs are still being written: %s", exc or "timed out")
            return default

    def _submission_end(self, events: list, revision: int) -> int:
        """The latest revision of an end-of-submission mark among `events` and `revision`."""
        key = self.registry.keys.submitted
        for event in events:
            if event.key == key and event.value is not None:
                revision = max(revision, event.revision)
        return revision

    def _job_news(self, events: list, revision: int) -> tuple[int, int]:
        """(job events among `events`, the latest of their revisions and `revision`)."""
        jobs, count = self.registry.keys.jobs, 0
        for event in events:
            if event.key.startswith(jobs):
                count += 1
                revision = max(revision, event.revision)
        return count, revision

    async def _watch(self, revision: int, dirty: asyncio.Event) -> None:
        reg = self.registry
        prefixes = self._view.prefixes if self._view is not None else [reg.keys.jobs, reg.keys.machines, reg.keys.schedule]
        prefixes = [*prefixes, reg.keys.submitted]
        async for events in reg.watch_batches(prefixes, revision):   # one etcd response at a time
            self._events.extend(events)
            dirty.set()

    async def _keep_lease(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            remaining = await self.registry.keepalive(self._lease)
            if remaining <= 0:
                raise NotLeader("engine leader lease expired")

    def _update_hold(self, snapshot: ClusterSnapshot, evidence=None) -> Hold:
        placed_on = {p.machine_id for p in snapshot.placements.values()}
        self._hold_state, hold = self._hold_state.step(snapshot.machines, placed_on, time.monotonic(),
                                                       self.hold_policy, evidence)
        if hold.reason != self.hold.reason and hold.reason:
            (log.warning if hold.disrupted else log.info)("engine: %s", hold.reason)
        elif self.hold.reason and not hold.reason:
            log.info("engine: no machine held any more; scheduling as usual")
        self.hold = hold
        return hold

    async def reconcile(self, snapshot: ClusterSnapshot, changes: Changes | None = None) -> bool:
        """One pass on `snapshot`; True if it wrote to the schedule. `changes`: what changed
        since the previous pass, if known (the incremental planner then looks only at that)."""
        hold = self._update_hold(snapshot)
        if hold.ask is not None and self.evidence is not None:
            evidence = await self.evidence.gather(hold.ask, self._hold_state, snapshot.machines)
            if evidence is not None:
                hold = self._update_hold(snapshot, evidence)
        holding = bool(hold.held) or hold.in_grace
        if holding:  # the incremental planner knows nothing of held machines: full passes
            self._planner.forget()
        started, started_cpu = time.perf_counter(), time.thread_time()
        planned = self._planner.plan(snapshot, changes) if self._globals_written is not None and not holding else None
        if planned is not None:
            # only new plain units since an idle pass: the global units are as written
            decisions, wanted_globals = planned, self._globals_written
            self.stats.planned_passes += 1
            if decisions.empty:
                return False
        else:
            # reconcile() is pure: the same inputs as a pass that wrote nothing decide nothing again.
            inputs = (snapshot.units, snapshot.machines, snapshot.placements, hold.key)
            if self._idle_inputs is not None and all(a == b for a, b in zip(inputs, self._idle_inputs)):
                self.stats.skipped_passes += 1
                self._planner.forget()   # it was owed this pass's changes
                return False
            self._idle_inputs = None
            decisions = reconcile(with_ghosts(snapshot, hold), cache=self._cache)
            decisions = restrain(decisions, snapshot, hold)
            if not holding:
                self._planner.remember(snapshot, decisions)
            wanted_globals = global_targets(snapshot, self._cache)
        decided = time.perf_counter() - started
        self.stats.reconcile_seconds += decided
        self.stats.reconcile_cpu_seconds += time.thread_time() - started_cpu
        self.stats.passes += 1
        if self._globals_written is None:
            self._globals_written = await self.registry.global_targets()
        publish = [(n, h, s) for n, (h, s) in sorted(wanted_globals.items()) if self._globals_written.get(n) != (h, s)]
        retract = sorted(set(self._globals_written) - set(wanted_globals))
        if decisions.empty and not publish and not retract:
            if planned is None:
                self._idle_inputs = inputs
            return False
        if log.isEnabledFor(logging.INFO):
            for unplace in decisions.unplaces:
                log.info("unscheduling %s from %s: %s", unplace.name, unplace.machine_id[:8], unplace.reason)
            for place in decisions.places:
                p = place.placement
                log.info("scheduling %s (%s) to %s%s", p.name, p.desired_state.value, p.machine_id[:8],
                         f": {place.reason}" if place.reason else "")
        started = time.monotonic()
        try:
            self.stats.transactions += await self.registry.apply_schedule(
                fence_machine_id=self.machine_id,
                unplace=[(u.name, u.machine_id) for u in decisions.unplaces],
                place=[p.placement for p in decisions.places],
                publish_globals=publish,
                retract_globals=retract,
            )
        except BaseException:
            self._planner.forget()
            raise
        if self._view is not None:
            self._view.note_written(decisions)
        self.stats.last_decide_seconds = decided
        self.stats.last_write_at = time.monotonic()
        self.stats.apply_seconds += self.stats.last_write_at - started
        self._globals_written = wanted_globals
        self.stats.placements += len(decisions.places)
        self.stats.unplacements += len(decisions.unplaces)
        self.stats.write_log = self.stats.write_log[-(WRITE_LOG - 1):] + [
            (started, self.stats.last_write_at, len(decisions.places), len(decisions.unplaces))]
        return True

    async def resign(self) -> None:
        """Give up leadership at shutdown, so that another engine takes over at once instead of
        after the lease TTL. fleetd calls this after cancelling `run()`, which has already
        cleared `is_leader`: the leader key is deleted if (and only if) it names this machine."""
        try:
            await self.registry.resign(self.machine_id)
        except RegistryError:
            pass
