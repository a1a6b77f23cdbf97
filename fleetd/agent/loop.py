"""The agent's imperative shell: watch this machine's keys, make local systemd match, publish states.

- Level-triggered: each pass reads this machine's placements and the global units at one
  revision, computes the pure plan against what is on disk and in systemd, and executes it.
- Woken by a watch on `schedule/<me>/`, `global/` and `machines/<me>/` only (no watch storm),
  with a periodic resync as a safety net.
- Unit states are published from systemd's D-Bus signals, under the machine's lease.
- Cut off from etcd for longer than the TTL (the lease must have expired and the engine may have
  moved our units), non-global units are stopped so that no unit runs twice.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from fleetd.agent.executor import execute
from fleetd.agent.plan import DesiredUnit, desired_aware_hash, observe, plan
from fleetd.agent.systemd import SystemdManager, UnitSystemdState
from fleetd.constraints import global_units_for
from fleetd.errors import FleetError, RegistryError
from fleetd.model import DesiredState, Unit, UnitState
from fleetd.presence import Presence
from fleetd.registry import Registry, WatchCompacted

log = logging.getLogger(__name__)

LOAD_RETRY = 5.0  # seconds before a pass that failed is tried again


@dataclass
class AgentStats:
    passes: int = 0
    tasks: int = 0
    failures: int = 0
    states_published: int = 0
    last_error: str = ""
    desired_units: int = 0  # units this agent should run (a gauge; the units are Agent._desired)


def unit_text(unit_file_text: str) -> str:
    """What is written to disk for a plain unit: its text. Container units are rendered by
    `Agent.unit_texts` (fleetd/container/)."""
    return unit_file_text


class Agent:
    def __init__(self, registry: Registry, systemd: SystemdManager, presence: Presence,
                 resync_interval: float = 30.0, containers=None, observer=None):
        self.registry = registry
        self.systemd = systemd
        self.presence = presence
        self.resync_interval = resync_interval
        self.containers = containers  # fleetd.container.node.NodeContainers, None: none here
        # told the units this machine runs and every systemd state seen (e.g. the service
        # endpoint publisher, fleetd/discovery/publisher.py): units_desired(files), unit_states(states)
        self.observer = observer
        self.stats = AgentStats()  # metrics only: the agent never reads them back
        self._desired: dict[str, DesiredUnit] = {}  # the last pass's desired units
        self._launched: dict[str, str] = {}
        self._applied: dict[str, tuple[str, str]] = {}  # name -> (hash, desired state applied)
        self._global_names: set[str] = set()
        self._published: dict[str, UnitState] = {}
        # Publications come from two tasks (systemd's signals, and the pass that just applied a
        # desired state); each computes what it sends and records it while holding this lock,
        # so that a state computed before the pass finished can never land after, and
        # overwrite, the one computed after it.
        self._publishing = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._read_revision = 0  # the etcd revision the last pass read its view at
        self._prefetch: list[str] = []  # unit hashes named by watch events since the last read
        self._watch = None

    @property
    def machine_id(self) -> str:
        return self.presence.machine.id

    # ------------------------------------------------------------------ desired state

    async def desired_units(self) -> tuple[dict[str, DesiredUnit], int]:
        reg = self.registry
        # the bodies of units the watch just named come in the same transaction as the view
        prefetch, self._prefetch = self._prefetch, []
        view = await reg.machine_view(self.machine_id, prefetch=prefetch)
        placements, globals_, revision = view.placements, view.globals, view.revision
        bodies = await reg.bodies([p.hash for p in placements.values()] + [h for h, _ in globals_.values()])
        machine = view.machine or self.presence.machine
        placed_units = [Unit(n, bodies[p.hash], p.desired_state) for n, p in placements.items() if p.hash in bodies]
        global_units = [Unit(n, bodies[h], s) for n, (h, s) in globals_.items() if h in bodies]
        running_globals = global_units_for(machine, placed_units + global_units, placements)
        wanted = [u for u in placed_units if u.desired_state is not DesiredState.INACTIVE]
        wanted += [u for u in global_units if u.name in running_globals]
        texts = await self.unit_texts({u.name: u.file for u in wanted})
        desired = {u.name: DesiredUnit(u.name, u.hash, texts[u.name], u.desired_state) for u in wanted}
        self._global_names = {u.name for u in global_units if u.name in running_globals}
        if self.observer is not None:
            self.observer.units_desired({u.name: u.file for u in wanted})
        return desired, revision

    async def unit_texts(self, units: dict) -> dict[str, str]:
        """What to write to disk for each unit: plain units as they are, container units
        rendered for this machine (their images fetched first, see fleetd/container/node.py)."""
        from fleetd.unit.container import is_container_unit

        if self.containers is not None:
            return await self.containers.texts(units)
        out = {name: unit_text(f.serialize()) for name, f in units.items()}
        if any(is_container_unit(f) for f in units.values()):
            from fleetd.container.render import CannotRun, NodeFacts, render_or_explain

            for name, f in units.items():
                if is_container_unit(f):
                    out[name] = render_or_explain(name, f, NodeFacts(), CannotRun(
                        "this fleetd runs without container support"))
        return out

    # ------------------------------------------------------------------ one pass

    async def reconcile_once(self) -> int:
        """One level-triggered pass. Returns the etcd revision it was based on."""
        if self.containers is not None:
            await self.containers.process_imports()
        desired, revision = await self.desired_units()
        installed = self.systemd.installed_units()
        names = sorted(set(installed) | set(desired))
        states = await self.systemd.states(names) if names else {}
        self._observe(states.values())
        observed = observe(installed, states, desired_aware_hash(desired))
        the_plan = plan(desired, observed, self._launched)
        self.stats.passes += 1
        self._desired = desired
        self.stats.desired_units = len(desired)
        if the_plan:
            for task in the_plan.tasks:
                log.info("agent: %s", task)
            result = await execute(the_plan, self.systemd, known=states)
            self._launched = the_plan.launched_after(result.attempted, result.completed)
            self.stats.tasks += len(result.completed)
            unfinished = {t.name for t in result.failed + result.skipped}
            if not result.ok:
                self.stats.failures += 1
                self.stats.last_error = str(result.error)
                log.error("agent: %s", result.error)
                await self._publish_load_errors(result, desired)
        else:
            self._launched = dict(the_plan.launched)
            unfinished = set()
        self._applied = {
            name: (d.hash, d.desired.value) if name not in unfinished else self._applied.get(name, ("", ""))
            for name, d in desired.items()
        }
        await self._update_watch(set(desired))
        await self._publish_changed(desired)
        if self.containers is not None:
            await self.containers.publish(self.presence.lease_id)
        return revision

    # ------------------------------------------------------------------ states

    async def _update_watch(self, names: set[str]) -> None:
        if self._watch is not None:
            await self._watch.set_units(names)
        gone = [n for n in self._published if n not in names]
        if gone:
            await self.registry.delete_states(gone, self.machine_id)
            for name in gone:
                self._published.pop(name, None)

    async def _publish_changed(self, desired: dict[str, DesiredUnit]) -> None:
        """Publish states that changed without a D-Bus signal: a replaced unit (new hash) that
        kept its systemd state (without this `fleetctl load --replace` would wait forever), and
        a unit whose applied desired state changed (a finished stop: `fleetctl stop` waits for
        it, not for the request)."""
        async with self._publishing:
            stale = sorted(n for n, d in desired.items()
                           if (p := self._published.get(n)) is not None
                           and (p.hash != d.hash or p.applied != self._applied_state(n, d.hash)))
            if not stale or self.presence.lease_id is None:
                return
            current = await self.systemd.states(stale)
            self._observe(current.values())
            states = [st for st in (self._state_of(s) for s in current.values()) if st is not None]
            await self.registry.publish_states(states, self.presence.lease_id)
            for st in states:
                self._published[st.name] = st
            self.stats.states_published += len(states)

    def _observe(self, states) -> None:
        if self.observer is not None:
            self.observer.unit_states(states)

    async def _publish_load_errors(self, result, desired: dict[str, DesiredUnit]) -> None:
        """Units whose file could not be written or loaded (a full or read-only
        units_directory...) are shown as such (`fleetctl list-units`: LOAD error, ACTIVE
        failed) instead of not at all; the next pass (at most LOAD_RETRY seconds later)
        tries again."""
        from fleetd.agent.plan import TaskKind

        names = sorted({t.name for t in result.failed if t.kind == TaskKind.LOAD and t.name in desired})
        if not names or self.presence.lease_id is None:
            return
        async with self._publishing:
            states = [UnitState(n, self.machine_id, desired[n].hash, "error", "failed", "load-failed", "")
                      for n in names]
            try:
                await self.registry.publish_states(states, self.presence.lease_id)
            except RegistryError as exc:
                log.warning("publishing load errors failed: %s", exc)
                return
            for st in states:
                self._published[st.name] = st
            self.stats.states_published += len(states)

    def _applied_state(self, name: str, unit_hash: str) -> str:
        applied_hash, state = self._applied.get(name, ("", ""))
        return state if applied_hash == unit_hash else ""

    def _state_of(self, s: UnitSystemdState) -> UnitState | None:
        desired = self._desired.get(s.name)
        if desired is None:
            return None
        return UnitState(s.name, self.machine_id, desired.hash, s.load_state, s.active_state, s.sub_state,
                         self._applied_state(s.name, desired.hash))

    async def publish_states(self) -> None:
        """Forward systemd's state changes to etcd, in batches, under the machine's lease."""
        while True:
            # no waiting for more: signals that arrive while a transaction is in flight make the
            # next batch, so a burst batches itself and a single start is published at once
            first = await self._watch.next()
            batch = {first.name: first}
            await asyncio.sleep(0)  # signals already read from the bus are dispatched first
            while True:
                try:
                    nxt = await self._watch.next(timeout=0)
                except asyncio.TimeoutError:
                    break
                batch[nxt.name] = nxt
            self._observe(batch.values())
            async with self._publishing:
                states = [st for st in (self._state_of(s) for s in batch.values()) if st is not None]
                states = [st for st in states if self._published.get(st.name) != st]
                if not states or self.presence.lease_id is None:
                    continue
                try:
                    await self.registry.publish_states(states, self.presence.lease_id)
                except RegistryError as exc:
                    log.warning("publishing unit states failed: %s", exc)
                    self._dirty.set()  # republish on the next pass
                    continue
                for st in states:
                    self._published[st.name] = st
                self.stats.states_published += len(states)

    async def republish_all(self) -> None:
        """After a new lease (states expire with the old one), publish every known state again."""
        names = sorted(self._desired)
        if not names or self.presence.lease_id is None:
            return
        async with self._publishing:
            current = await self.systemd.states(names)
            states = [st for st in (self._state_of(s) for s in current.values()) if st is not None]
            await self.registry.publish_states(states, self.presence.lease_id)
            self._published = {st.name: st for st in states}

    # ------------------------------------------------------------------ partition safety

    async def stop_local_units(self) -> None:
        """The lease must have expired: stop non-global units (the engine may run them elsewhere)."""
        doomed = [n for n in self.systemd.installed_units() if n not in self._global_names]
        if not doomed:
            return
        log.error("agent: lease lost; stopping %d non-global units: %s", len(doomed), ", ".join(sorted(doomed)))
        try:
            await self.systemd.unload(doomed)
        except FleetError as exc:
            log.error("agent: stopping units after lease loss failed: %s", exc)
        self._launched = {n: h for n, h in self._launched.items() if n not in doomed}
        self._published.clear()

    async def leave_fence(self, margin: float = 0.5) -> None:
        """fleetd is stopping: leave a systemd timer that stops the non-global units when the
        lease may expire (the engine may start them elsewhere after that), unless a fleetd
        starts again in time and removes it. One last keep-alive first, so that a restart gets
        the whole TTL."""
        import shutil
        import time

        from fleetd.lease_timing import lease_deadline

        p = self.presence
        if p.lost.is_set() or p.lease_id is None:
            return  # stopped already
        names = [n for n in self.systemd.installed_units() if n not in self._global_names]
        if not names:
            return
        if not p.holding:
            try:
                sent = time.monotonic()
                granted = await asyncio.wait_for(self.registry.keepalive(p.lease_id, timeout=1.0), 1.5)
                if granted > 0:
                    p.expires_at = max(p.expires_at, lease_deadline(sent, granted))
            except (RegistryError, asyncio.TimeoutError):
                pass
        seconds = max(0.001, p.expires_at - time.monotonic() - margin)
        try:
            await self.systemd.arm_fence(names, seconds, systemctl=shutil.which("systemctl") or "/bin/systemctl")
        except FleetError as exc:
            log.error("agent: cannot leave the fence timer (units keep running unsupervised): %s", exc)
            return
        log.info("agent: %d non-global units stop in %.1fs (when the lease may expire) unless fleetd starts "
                 "again by then", len(names), seconds)

    # ------------------------------------------------------------------ main loop

    async def _watch_keys(self, revision: int) -> None:
        reg = self.registry
        prefixes = [reg.keys.machine_schedule(self.machine_id), reg.keys.globals, reg.keys.machine_dir(self.machine_id)]
        try:
            async for event in reg.watch(prefixes, revision):
                if event.key.startswith(reg.keys.machine_dir(self.machine_id)) and event.key.endswith("/object"):
                    continue  # our own presence record
                if event.revision <= self._read_revision:
                    continue  # written while the last pass was reading: in its read already
                self._prefetch.extend(reg.target_hashes([event]))
                self._dirty.set()
        finally:
            self._dirty.set()  # a broken watch is re-established by the next pass

    async def run(self) -> None:
        self._watch = await self.systemd.watch(())
        publisher = asyncio.create_task(self.publish_states())
        watcher: asyncio.Task | None = None
        lease_seen = self.presence.lease_id
        failures_seen = self.stats.failures
        try:
            while True:
                if self.presence.lost.is_set():
                    await self.stop_local_units()
                    await self.presence.registered.wait()
                    lease_seen = None
                try:
                    revision = await self.reconcile_once()
                    self._read_revision = revision
                    if lease_seen != self.presence.lease_id:
                        await self.republish_all()
                        lease_seen = self.presence.lease_id
                except RegistryError as exc:
                    log.warning("agent: %s", exc)
                    await self._wait(1.0)
                    continue
                if watcher is None or watcher.done():
                    if watcher is not None and not watcher.cancelled() and watcher.exception() is not None:
                        exc = watcher.exception()
                        if not isinstance(exc, WatchCompacted):
                            log.warning("agent watch ended: %s", exc)
                    watcher = asyncio.create_task(self._watch_keys(revision + 1))
                failed = self.stats.failures != failures_seen
                failures_seen = self.stats.failures
                # after a failed pass (a full disk, systemd refusing a job) try again soon, not hot
                await self._wait(min(self.resync_interval, LOAD_RETRY) if failed else self.resync_interval)
        finally:
            publisher.cancel()
            if watcher is not None:
                watcher.cancel()
            await asyncio.gather(publisher, *([watcher] if watcher else []), return_exceptions=True)
            if self._watch is not None:
                self._watch.close()

    async def _wait(self, timeout: float) -> None:
        lost = asyncio.ensure_future(self.presence.lost.wait())
        dirty = asyncio.ensure_future(self._dirty.wait())
        try:
            await asyncio.wait([lost, dirty], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            dirty.cancel()
        self._dirty.clear()


