"""asyncio adapter over dbus-fast (dbus-next's API, compiled) to the systemd manager (systemd1).

This is the only module of fleetd that speaks D-Bus. It loads unit files the way fleet's agent
does (a file in a runtime units directory, `LinkUnitFiles(runtime=True)`, `EnableUnitFiles` for
units with an [Install] section, at most one `Reload` per batch), starts and stops units and
waits for their jobs, reads unit states, and turns systemd's signals into a stream of unit states.

Facts it relies on (verified on systemd 252, see the lab notes):
- the system bus refuses more than 128 pending replies per connection, so every call goes
  through a semaphore of `MAX_PENDING_CALLS` (64);
- signals (`JobRemoved`, `UnitNew`, `UnitRemoved`, `PropertiesChanged`) are only emitted after
  `Subscribe`; a unit's `PropertiesChanged` for `org.freedesktop.systemd1.Unit` carries
  ActiveState and SubState ("emits-change") but never LoadState, which systemd declares
  constant although it changes (not-found -> loaded when the unit cache loads a new file,
  anything at a daemon-reload): a watch must read the load state, never infer it;
- the bus delivers a signal only to connections with a matching rule: the units' own signals
  are matched per watched unit (`track_units`; a start also signals the targets and slice the
  unit depends on, a daemon-reload every unit), so this process parses only what a watch reads;
- `JobRemoved` may be read in the same socket batch as the reply that names the job, i.e.
  before the caller knows the job path: results of such jobs are kept briefly;
- a unit systemd does not know (or knows only as "not-found") is loaded from disk on its next
  lookup once a unit directory changed (systemd's unit cache compares the directories'
  mtimes, `manager_unit_cache_should_retry_load`), so a new unit needs no daemon-reload, which
  takes 100-300 ms; a unit systemd has loaded keeps its old definition until a daemon-reload.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable, Iterable, Mapping

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from fleetd.errors import InvalidUnitName, SystemdError, SystemdUnitError, UnitFileError
from fleetd.unit.control import check_text

SYSTEMD_BUS_NAME = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER_IFACE = "org.freedesktop.systemd1.Manager"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
SERVICE_IFACE = "org.freedesktop.systemd1.Service"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
UNIT_PATH_PREFIX = "/org/freedesktop/systemd1/unit/"
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"

FENCE_UNIT = "fleet-fence"
"""The transient timer and service a stopping fleetd leaves behind (`arm_fence`)."""

MAX_PENDING_CALLS = 64
"""Concurrent D-Bus calls per connection; the bus refuses more than 128 pending replies."""

_EARLY_JOB_RESULTS_MAX = 4096
_INSTALL_SECTION = re.compile(r"^[ \t]*\[Install\][ \t]*$", re.MULTILINE)

# active states in which a unit must be stopped before it is unloaded
_STOPPED_STATES = frozenset({"inactive", "failed"})


@dataclass(frozen=True)
class UnitSystemdState:
    """One unit as systemd reports it. `main_pid` is only filled in on request (0: none)."""

    name: str
    load_state: str
    active_state: str
    sub_state: str
    main_pid: int | None = None


class SystemdCallError(SystemdError):
    """systemd answered a D-Bus call with an error."""

    def __init__(self, member: str, error_name: str, text: str) -> None:
        self.member = member
        self.error_name = error_name
        self.text = text
        super().__init__(f"systemd {member}: {text or error_name} ({error_name})")


def check_unit_name(name: str) -> str:
    """The last line of defence: the caller validates names, we still refuse paths."""
    if not isinstance(name, str) or not name or "/" in name or "\0" in name or name in (".", ".."):
        raise InvalidUnitName(f"refusing unit name {name!r}: not a plain file name")
    return name


def unit_name_from_path(path: str) -> str | None:
    """The unit name of systemd's object path of a unit (bus_label_unescape: `_2d` is "-",
    ...); None for paths that are not unit objects."""
    if not path.startswith(UNIT_PATH_PREFIX):
        return None
    label = path[len(UNIT_PATH_PREFIX):]
    if label == "_":
        return ""
    raw = bytearray()
    i = 0
    while i < len(label):
        if label[i] == "_" and _is_hex(label[i + 1:i + 3]):
            raw.append(int(label[i + 1:i + 3], 16))
            i += 3
        else:
            raw.extend(label[i].encode())
            i += 1
    return raw.decode(errors="replace")


def unit_object_path(name: str) -> str:
    """systemd's object path of a unit (bus_label_escape: every byte but an ASCII letter or digit,
    and a leading digit, as `_xx`)."""
    if not name:
        return UNIT_PATH_PREFIX + "_"
    out = []
    for i, byte in enumerate(name.encode()):
        c = chr(byte)
        if (c.isascii() and c.isalpha()) or (c.isascii() and c.isdigit() and i > 0):
            out.append(c)
        else:
            out.append(f"_{byte:02x}")
    return UNIT_PATH_PREFIX + "".join(out)


def unit_match_rules(name: str | None) -> tuple[str, ...]:
    """The bus match rules of a watched unit's signals (None: of every unit): its Unit
    interface's PropertiesChanged, and its UnitRemoved."""
    where = (f"path_namespace='{UNIT_PATH_PREFIX.rstrip('/')}'" if name is None
             else f"path='{unit_object_path(name)}'")
    removed = "" if name is None else f",arg0='{name}'"
    return (f"type='signal',sender='{SYSTEMD_BUS_NAME}',interface='{PROPERTIES_IFACE}',"
            f"member='PropertiesChanged',{where},arg0='{UNIT_IFACE}'",
            f"type='signal',sender='{SYSTEMD_BUS_NAME}',path='{MANAGER_PATH}',interface='{MANAGER_IFACE}',"
            f"member='UnitRemoved'{removed}")


def _is_hex(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789abcdefABCDEF" for c in text)


def _variants(properties: list[tuple[str, tuple[str, object]]]) -> list:
    from dbus_fast import Variant

    return [[name, Variant(sig, value)] for name, (sig, value) in properties]


def has_install_section(text: str) -> bool:
    return _INSTALL_SECTION.search(text) is not None


def _refuse_unreadable(units: Mapping[str, str]) -> dict[str, str]:
    """The units whose text breaks fleetd.unit.control's rule (a NUL, a bare CR, ...), with why:
    they are never written to disk, whatever the registry holds."""
    refused: dict[str, str] = {}
    for name, text in units.items():
        try:
            check_text(text, name)
        except UnitFileError as exc:
            refused[name] = str(exc)
    return refused


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class SystemdManager:
    """One connection to a systemd manager, plus the units directory fleetd owns."""

    def __init__(self, bus: MessageBus, units_dir: Path) -> None:
        self._bus = bus
        self.units_dir = Path(units_dir)
        self._sem = asyncio.Semaphore(MAX_PENDING_CALLS)
        self._job_waiters: dict[str, asyncio.Future[str]] = {}
        self._early_results: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._calls_in_flight = 0
        self._watches: set[UnitWatch] = set()
        self._closed = False
        self._reloading = False
        self.reloads = 0  # daemon-reloads requested by this manager
        self.reloads_skipped = 0  # load batches that needed none
        self._disconnect_task: asyncio.Task | None = None
        self._unit_rules: dict[str, int] = {}  # watched unit -> watches of it (its match rules are on)
        self._all_units = False  # the rules of every unit's signals are on (a unit's were refused)

    # --- connection -------------------------------------------------------------------------

    @classmethod
    async def connect(cls, units_dir: Path, *, bus_address: str | None = None) -> "SystemdManager":
        """Connect to the system bus (or `bus_address`), subscribe to systemd's signals.

        `units_dir` must name the same directory for this process and for systemd (its
        paths are passed to LinkUnitFiles). The tests drive a node's systemd from the host
        with `bus_address="unix:path=/proc/<init>/root/run/dbus/system_bus_socket"` and the
        units directory bind-mounted into the node at the same path.
        """
        bus = MessageBus(bus_address=bus_address, bus_type=BusType.SYSTEM)
        where = bus_address or "the system bus"
        try:
            await bus.connect()
        except Exception as exc:  # dbus-fast raises plain OSError/Exception subclasses
            raise SystemdError(f"cannot connect to {where}: {exc}") from exc
        self = cls(bus, units_dir)
        bus.add_message_handler(self._on_message)
        try:
            # only the manager's signals this adapter reads; the units' own signals (their
            # PropertiesChanged, UnitRemoved) by a rule per watched unit (`track_units`): a start
            # makes systemd signal 5-7 other units too (targets, slices: their jobs), and a
            # daemon-reload removes and re-creates every unit (~300 UnitNew/UnitRemoved in a lab
            # node), each a message this process had to parse (0.3-1 ms each in dbus-next's pure Python)
            for member in ("JobRemoved", "Reloading"):
                await self._add_match(f"type='signal',sender='{SYSTEMD_BUS_NAME}',path='{MANAGER_PATH}',"
                                      f"interface='{MANAGER_IFACE}',member='{member}'")
            await self._call("Subscribe")
        except BaseException:
            bus.disconnect()
            raise
        self._disconnect_task = asyncio.get_running_loop().create_task(self._watch_disconnect())
        return self

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._fail_all(SystemdError("systemd manager connection closed"))
        self._bus.disconnect()
        if self._disconnect_task is not None:
            # not cancelled: that would cancel dbus-fast's own disconnect future
            await asyncio.wait({self._disconnect_task}, timeout=5)

    async def __aenter__(self) -> "SystemdManager":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _watch_disconnect(self) -> None:
        try:
            await self._bus.wait_for_disconnect()
            error = SystemdError("lost the D-Bus connection to systemd")
        except Exception as exc:
            error = SystemdError(f"lost the D-Bus connection to systemd: {exc}")
        self._fail_all(error)

    def _fail_all(self, error: SystemdError) -> None:
        for fut in self._job_waiters.values():
            if not fut.done():
                fut.set_exception(error)
        self._job_waiters.clear()
        for watch in list(self._watches):
            watch._fail(error)

    # --- the signals of watched units ------------------------------------------------------------

    async def _add_match(self, rule: str) -> None:
        await self._call("AddMatch", "s", [rule], destination="org.freedesktop.DBus",
                         path="/org/freedesktop/DBus", interface="org.freedesktop.DBus")

    async def track_units(self, added: Iterable[str] = (), gone: Iterable[str] = ()) -> None:
        """Units that joined (`added`) or left (`gone`) a watch: their signals are matched on
        the bus while at least one watch has them. The rule is on when this returns, so a job
        queued or a state read after it is never missed. Should the bus refuse a rule (its
        per-connection quota), every unit's signals are matched from then on."""
        new, old = self._count_rules(added, gone)
        if new:
            added_ok = await asyncio.gather(*self._rule_calls(new), return_exceptions=True)
            if await self._refused(added_ok):
                return
        if old:
            await asyncio.gather(*(self._call("RemoveMatch", "s", [r], destination="org.freedesktop.DBus",
                                              path="/org/freedesktop/DBus", interface="org.freedesktop.DBus")
                                   for n in old for r in unit_match_rules(n)), return_exceptions=True)

    def _count_rules(self, added: Iterable[str], gone: Iterable[str]) -> tuple[list[str], list[str]]:
        """Count the watches of each unit; the units whose rules must go on and off the bus."""
        new = []
        for name in added:
            self._unit_rules[name] = self._unit_rules.get(name, 0) + 1
            if self._unit_rules[name] == 1:
                new.append(name)
        old = []
        for name in gone:
            count = self._unit_rules.get(name, 0) - 1
            if count > 0:
                self._unit_rules[name] = count
            elif self._unit_rules.pop(name, None) is not None:
                old.append(name)
        if self._all_units or self._closed:
            return [], []
        return new, old

    def _rule_calls(self, names: Iterable[str]) -> list:
        return [self._add_match(r) for n in names for r in unit_match_rules(n)]

    async def _refused(self, outcomes: Iterable) -> bool:
        """After a unit's rule was refused (the bus's per-connection quota): every unit's
        signals are matched from then on. True if that happened."""
        if not any(isinstance(r, BaseException) for r in outcomes):
            return False
        if not self._all_units:
            for rule in unit_match_rules(None):
                await self._add_match(rule)
            self._all_units = True
        return True

    # --- low level ----------------------------------------------------------------------------

    async def _call(self, member: str, signature: str = "", body: Iterable = (), *,
                    path: str = MANAGER_PATH, interface: str = MANAGER_IFACE,
                    destination: str = SYSTEMD_BUS_NAME) -> list:
        if self._closed:
            raise SystemdError(f"systemd {member}: connection closed")
        msg = Message(destination=destination, path=path, interface=interface, member=member,
                      signature=signature, body=list(body))
        async with self._sem:
            self._calls_in_flight += 1
            try:
                reply = await self._bus.call(msg)
            except Exception as exc:
                raise SystemdError(f"systemd {member}: D-Bus call failed: {exc}") from exc
            finally:
                self._calls_in_flight -= 1
        if reply is None:
            raise SystemdError(f"systemd {member}: no reply (D-Bus connection closed)")
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise SystemdCallError(member, reply.error_name or "unknown error", text)
        return reply.body

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL:
            return None
        if msg.interface == MANAGER_IFACE and msg.path == MANAGER_PATH:
            if msg.member == "JobRemoved":
                _job_id, job_path, unit, result = msg.body
                self._job_removed(job_path, result)
            elif msg.member == "Reloading":
                (self._reloading,) = msg.body
                if not self._reloading:
                    for watch in list(self._watches):
                        watch._reloaded()
            elif msg.member == "UnitRemoved" and self._watches and not self._reloading:
                # during a daemon-reload systemd removes and re-creates every unit: those
                # signals say nothing; watches refresh their units once the reload is over
                name, _path = msg.body
                for watch in list(self._watches):
                    watch._unit_removed(name)
        elif (msg.interface == PROPERTIES_IFACE and msg.member == "PropertiesChanged"
              and self._watches):
            iface, changed, _invalidated = msg.body
            if iface != UNIT_IFACE:
                return None
            name = unit_name_from_path(msg.path or "")
            if not name:
                return None
            values = {k: v.value for k, v in changed.items()
                      if k in ("LoadState", "ActiveState", "SubState")}
            for watch in list(self._watches):
                watch._properties_changed(name, values)
        return None

    def _job_removed(self, job_path: str, result: str) -> None:
        fut = self._job_waiters.pop(job_path, None)
        if fut is not None:
            if not fut.done():
                fut.set_result(result)
        elif self._calls_in_flight:
            # the reply naming this job may already be read but not yet seen by its caller
            self._early_results[job_path] = result
            while len(self._early_results) > _EARLY_JOB_RESULTS_MAX:
                self._early_results.popitem(last=False)

    # --- jobs -----------------------------------------------------------------------------------

    async def _run_job(self, method: str, name: str, timeout: float | None) -> str:
        """Queue a job with mode 'replace' and return its result ('done' is success)."""
        try:
            (job_path,) = await self._call(method, "ss", [name, "replace"])
        except SystemdCallError as exc:
            if method == "StopUnit" and exc.error_name == NO_SUCH_UNIT:
                return "done"  # not loaded at all: nothing runs
            return f"refused: {exc.text or exc.error_name}"
        return await self._job_result(job_path, timeout)

    async def _job_result(self, job_path: str, timeout: float | None) -> str:
        result = self._early_results.pop(job_path, None)
        if result is not None:
            return result
        fut = asyncio.get_running_loop().create_future()
        self._job_waiters[job_path] = fut
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            return f"no JobRemoved within {timeout:g}s"
        finally:
            self._job_waiters.pop(job_path, None)

    async def _run_jobs(self, method: str, names: Iterable[str],
                        timeout: float | None) -> dict[str, str]:
        """Run one job per unit concurrently (bounded by the call semaphore); the failures."""
        names = list(dict.fromkeys(check_unit_name(n) for n in names))
        results = await asyncio.gather(*(self._run_job(method, n, timeout) for n in names))
        return {n: _describe_result(r) for n, r in zip(names, results) if r != "done"}

    async def start(self, names: Iterable[str], *, timeout: float | None = None,
                    watch: "UnitWatch | None" = None, known: Mapping[str, UnitSystemdState] | None = None,
                    on_done: Callable[[str, str], None] | None = None) -> None:
        """StartUnit(mode='replace') for each unit and wait for its job; raise on failures.

        With `watch`, the units join it before their jobs but are held (`UnitWatch.hold`, from
        the `known` states): they are delivered together once every job of the batch has ended
        (one publication for the batch; each job's end released its own unit at once in a
        measured variant, which cost more than it saved on a loaded machine, docs/performance.md),
        never while being started, and need no read after their jobs;
        `on_done(name, result)` is called as each job ends ("done" is success)."""
        names = list(dict.fromkeys(check_unit_name(n) for n in names))
        if watch is None:
            failures = await self._run_jobs("StartUnit", names, timeout)
        else:
            added = [n for n in names if n not in watch.units]
            rules: list = []
            if 2 * len(added) + len(names) <= MAX_PENDING_CALLS - self._calls_in_flight:
                # the units' match rules go out with the jobs, not before them: the bus handles
                # a connection's messages in order, so each rule is on before its unit's
                # StartUnit reaches systemd (no signal of the job is missed); the calls are
                # sent in the order their tasks are made (none waits for the semaphore here)
                rules = self._rule_calls(self._count_rules(added, ())[0])
            else:
                await self.track_units(added)  # before the jobs
            watch.hold(names, known or {})

            async def one(name: str) -> str:
                result = await self._run_job("StartUnit", name, timeout)
                if on_done is not None:
                    on_done(name, result)
                return result

            try:
                outcomes = await asyncio.gather(*rules, *(one(n) for n in names), return_exceptions=True)
                results = outcomes[len(rules):]
                if await self._refused(outcomes[:len(rules)]):
                    watch.restale(names)  # signals may have been missed: read at release
            finally:
                for name in names:  # together: one publication for the batch
                    watch.release(name)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            failures = {n: _describe_result(r) for n, r in zip(names, results) if r != "done"}
        if failures:
            raise SystemdUnitError("start", failures)

    async def stop(self, names: Iterable[str], *, timeout: float | None = None) -> None:
        """StopUnit(mode='replace') for each unit and wait for its job; raise on failures."""
        failures = await self._run_jobs("StopUnit", names, timeout)
        if failures:
            raise SystemdUnitError("stop", failures)

    async def restart(self, names: Iterable[str], *, timeout: float | None = None) -> None:
        """RestartUnit(mode='replace') for each unit and wait for its job; raise on failures."""
        failures = await self._run_jobs("RestartUnit", names, timeout)
        if failures:
            raise SystemdUnitError("restart", failures)

    # --- the fence fleetd leaves behind when it stops ------------------------------------------

    async def arm_fence(self, names: Iterable[str], seconds: float, *,
                        systemctl: str = "/bin/systemctl") -> None:
        """Leave a transient timer (`FENCE_UNIT`.timer) that stops these units in `seconds`
        (`systemctl stop`, run by the transient `FENCE_UNIT`.service): fleetd is stopping and
        its lease will expire then, after which the engine may start them elsewhere. A fleetd
        that starts in time removes it (`disarm_fence`). Replaces a fence left before."""
        names = sorted(dict.fromkeys(check_unit_name(n) for n in names))
        if not names:
            return
        await self.disarm_fence()
        usec = max(1, int(seconds * 1_000_000))
        service = [
            ("Description", ("s", "fleet: stop units of a stopped fleetd whose lease expired")),
            ("Type", ("s", "oneshot")),
            ("ExecStart", ("a(sasb)", [[systemctl, [systemctl, "stop", "--", *names], False]])),
        ]
        timer = [
            ("Description", ("s", "fleet: fence the units of a stopped fleetd at its lease expiry")),
            ("TimersMonotonic", ("a(st)", [["OnActiveSec", usec]])),
            ("AccuracyUSec", ("t", 10_000)),
            ("RemainAfterElapse", ("b", False)),
        ]
        body = [f"{FENCE_UNIT}.timer", "replace", _variants(timer), [[f"{FENCE_UNIT}.service", _variants(service)]]]
        for attempt in range(20):
            try:
                (job_path,) = await self._call("StartTransientUnit", "ssa(sv)a(sa(sv))", body)
                break
            except SystemdCallError as exc:  # the previous one not garbage-collected yet
                if "UnitExists" not in exc.error_name or attempt == 19:
                    raise
                await asyncio.sleep(0.05)
        result = await self._job_result(job_path, 10.0)
        if result != "done":
            raise SystemdUnitError("start", {f"{FENCE_UNIT}.timer": _describe_result(result)})

    async def disarm_fence(self) -> bool:
        """Remove the timer a previous fleetd left (True if there was one still waiting). A
        fence that has fired already is left to finish: the agent's pass starts the units again
        if they are still this machine's."""
        armed = False
        try:
            states = await self.states([f"{FENCE_UNIT}.timer"])
            armed = states[f"{FENCE_UNIT}.timer"].active_state == "active"
        except SystemdError:
            pass
        await self._run_job("StopUnit", f"{FENCE_UNIT}.timer", 10.0)
        for unit in (f"{FENCE_UNIT}.timer", f"{FENCE_UNIT}.service"):
            try:
                await self._call("ResetFailedUnit", "s", [unit])
            except SystemdCallError:
                pass
        return armed

    # --- unit files -----------------------------------------------------------------------------

    def unit_path(self, name: str) -> Path:
        return self.units_dir / check_unit_name(name)

    def installed_units(self) -> dict[str, str]:
        """The unit files in units_dir with their content (to adopt units after a restart)."""
        out: dict[str, str] = {}
        try:
            entries = sorted(os.scandir(self.units_dir), key=lambda e: e.name)
        except FileNotFoundError:
            return out
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            try:
                out[entry.name] = Path(entry.path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue  # unreadable: the caller sees it as absent and loads it again
        return out

    async def reload(self) -> None:
        """daemon-reload; the reply comes once systemd has reloaded."""
        self.reloads += 1
        await self._call("Reload")

    async def load(self, units: Mapping[str, str], *,
                   known: Mapping[str, UnitSystemdState] | None = None) -> dict[str, UnitSystemdState] | None:
        """Write, link (and enable) the units, then reload systemd once if it is needed; the
        units' states read after linking when no reload followed (None after a reload).

        `known`: the units' states as the caller read them just before (the agent's pass reads
        them to make its plan); without it (or for a unit it lacks) they are read here.

        No reload when every unit was unknown to systemd (or "not-found") before and is
        "loaded" right after linking: systemd found the new files by itself. Units systemd had
        loaded (a replaced file), and batches that enable [Install] links (the targets that
        get new wants must be reloaded), always get the reload; so does any unit that did not
        load by itself (a stale unit cache, a unit file with errors).

        A unit whose enabling fails is removed again; the others stay loaded, and
        SystemdUnitError names the failed ones after the reload.
        """
        units = {check_unit_name(n): text for n, text in units.items()}
        refused = _refuse_unreadable(units)
        units = {n: text for n, text in units.items() if n not in refused}
        if not units:
            if refused:
                raise SystemdUnitError("load", refused)
            return None
        if known is None or any(n not in known for n in units):
            known = await self.states(units)
        try:
            self.units_dir.mkdir(parents=True, exist_ok=True)
            for name, text in units.items():
                _write_atomic(self.unit_path(name), text)
        except OSError as exc:
            raise SystemdError(f"cannot write unit file {exc.filename}: {exc.strerror}") from exc
        paths = [str(self.unit_path(n)) for n in units]
        to_enable = [n for n, text in units.items() if has_install_section(text)]
        # New units only, no [Install] links: the read in which systemd loads the linked files
        # goes out with the link, not after its reply (systemd handles a connection's calls in
        # order, so the read sees the links): one round trip to systemd, not two.
        probe = not to_enable and all(st.load_state == "not-found" for st in known.values())
        link = self._call("LinkUnitFiles", "asbb", [paths, True, True])
        if probe:
            linked, read = await asyncio.gather(link, self.states(units), return_exceptions=True)
            for outcome in (linked, read):
                if isinstance(outcome, BaseException):
                    raise outcome
        else:
            await link

        failures: dict[str, str] = {}
        if to_enable:
            outcomes = await asyncio.gather(
                *(self._call("EnableUnitFiles", "asbb", [[n], True, True]) for n in to_enable),
                return_exceptions=True)
            for name, outcome in zip(to_enable, outcomes):
                if isinstance(outcome, BaseException):
                    if not isinstance(outcome, SystemdError):
                        raise outcome
                    failures[name] = f"enable: {outcome}"
            for name in failures:
                await self._forget_files([name])
        after = None
        if not probe:
            await self.reload()
        else:
            after = read
            if all(st.load_state == "loaded" for st in after.values()):
                self.reloads_skipped += 1
            else:
                await self.reload()
                after = None
        failures.update(refused)
        if failures:
            raise SystemdUnitError("load", failures)
        return after

    async def _forget_files(self, names: list[str]) -> dict[str, str]:
        """Disable (removes the link and the [Install] links), reset-failed, remove the file."""
        errors: dict[str, str] = {}

        async def one(name: str) -> None:
            try:
                await self._call("DisableUnitFiles", "asb", [[name], True])
            except SystemdCallError as exc:
                if exc.error_name != NO_SUCH_UNIT:
                    errors[name] = f"disable: {exc.text or exc.error_name}"
            try:
                await self._call("ResetFailedUnit", "s", [name])
            except SystemdCallError as exc:
                if exc.error_name != NO_SUCH_UNIT:
                    errors.setdefault(name, f"reset-failed: {exc.text or exc.error_name}")
            try:
                self.unit_path(name).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                errors[name] = f"remove {exc.filename}: {exc.strerror}"

        await asyncio.gather(*(one(n) for n in names))
        return errors

    async def unload(self, names: Iterable[str], *, timeout: float | None = None) -> None:
        """Stop (if active), disable, reset-failed and remove the units; one reload.

        Only units that stopped are unloaded; SystemdUnitError names the others.
        """
        names = list(dict.fromkeys(check_unit_name(n) for n in names))
        if not names:
            return
        states = await self.states(names)
        running = [n for n in names if states[n].active_state not in _STOPPED_STATES]
        failures = await self._run_jobs("StopUnit", running, timeout) if running else {}
        stopped = [n for n in names if n not in failures]
        if stopped:
            errors = await self._forget_files(stopped)
            await self.reload()
            failures.update(errors)
        if failures:
            raise SystemdUnitError("unload", failures)

    # --- states -----------------------------------------------------------------------------------

    async def states(self, names: Iterable[str], *,
                     main_pid: bool = False) -> dict[str, UnitSystemdState]:
        """ListUnitsByNames for the units (unknown ones come back as not-found)."""
        names = list(dict.fromkeys(check_unit_name(n) for n in names))
        if not names:
            return {}
        (rows,) = await self._call("ListUnitsByNames", "as", [names])
        out: dict[str, UnitSystemdState] = {}
        paths: dict[str, str] = {}
        for row in rows:
            name, _desc, load, active, sub, _followed, path = row[:7]
            out[name] = UnitSystemdState(name, load, active, sub)
            paths[name] = path
        for name in names:  # systemd answers for every name, but never trust a peer blindly
            out.setdefault(name, UnitSystemdState(name, "not-found", "inactive", "dead"))
        if main_pid:
            async def pid_of(name: str) -> int:
                if not name.endswith(".service") or out[name].load_state != "loaded":
                    return 0
                try:
                    (value,) = await self._call("Get", "ss", [SERVICE_IFACE, "MainPID"],
                                                path=paths[name], interface=PROPERTIES_IFACE)
                except SystemdCallError:
                    return 0
                return int(value.value)

            pids = await asyncio.gather(*(pid_of(n) for n in names))
            for name, pid in zip(names, pids):
                st = out[name]
                out[name] = UnitSystemdState(st.name, st.load_state, st.active_state,
                                             st.sub_state, pid)
        return {n: out[n] for n in names}

    async def watch(self, names: Iterable[str] = ()) -> "UnitWatch":
        """A stream of unit states from systemd's signals, for the given units.

        The current state of each unit is delivered first; then a state each time one of
        LoadState/ActiveState/SubState changes. Change the set with `UnitWatch.set_units`.
        """
        watch = UnitWatch(self)
        self._watches.add(watch)
        await watch.set_units(names)
        return watch


def _describe_result(result: str) -> str:
    if result.startswith(("refused:", "no JobRemoved")):
        return result
    return f"job result: {result}"


class UnitWatch:
    """Async iterator of `UnitSystemdState`, the latest per unit, from systemd's signals.

    States of a unit that change faster than the consumer reads are coalesced: the consumer
    always gets the newest one. Iteration ends after `close()`, or raises SystemdError if the
    connection to systemd is lost.

    Sources: `PropertiesChanged` of the unit object (carries ActiveState/SubState, never
    LoadState: while the last read load state is not "loaded", a signal makes the watch read
    the unit's whole state with `ListUnitsByNames` instead);
    `UnitRemoved` outside a reload (the unit left systemd's memory); and, after each
    daemon-reload (`Reloading(false)`), one `ListUnitsByNames` for the watched units, because
    a reload removes and re-creates every unit without reporting states that did not change.
    """

    def __init__(self, manager: SystemdManager) -> None:
        self._manager = manager
        self._names: set[str] = set()
        self._known: dict[str, UnitSystemdState] = {}
        self._pending: collections.OrderedDict[str, UnitSystemdState] = collections.OrderedDict()
        self._wakeup = asyncio.Event()
        self._signal_gen: dict[str, int] = collections.defaultdict(int)
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
        self._error: SystemdError | None = None
        self._held: set[str] = set()  # being started: their states wait for `release`
        self._stale: set[str] = set()  # held units whose known state needs a read at release

    @property
    def units(self) -> frozenset[str]:
        return frozenset(self._names)

    async def set_units(self, names: Iterable[str]) -> None:
        """Replace the set of watched units; new ones get their current state delivered."""
        names = {check_unit_name(n) for n in names}
        added = names - self._names
        await self._manager.track_units(sorted(added), sorted(self._names - names))
        for gone in self._names - names:
            self._known.pop(gone, None)
            self._pending.pop(gone, None)
            self._signal_gen.pop(gone, None)
            self._held.discard(gone)
            self._stale.discard(gone)
        self._names = names
        if added:
            await self._fetch(added)

    async def _fetch(self, names: Iterable[str]) -> None:
        """Ask systemd for the units' states; a signal that arrives meanwhile wins."""
        names = sorted(names)
        gen = {n: self._signal_gen[n] for n in names}
        current = await self._manager.states(names)
        for name, state in current.items():
            if self._signal_gen.get(name, 0) == gen[name]:
                self._offer(state)

    def _reloaded(self) -> None:
        if not self._names or self._closed:
            return
        self._spawn(self._refresh(set(self._names)))

    async def _refresh(self, names: set[str]) -> None:
        try:
            await self._fetch(names & self._names)
        except SystemdError as exc:
            self._fail(exc)

    def hold(self, names: Iterable[str], known: Mapping[str, UnitSystemdState]) -> None:
        """Watch these units (a start job is about to be queued for each), but deliver nothing
        of them until `release`: a unit being started is never reported `activating`. `known`:
        their states just before (read after their files were loaded); a unit without a loaded
        one is read at its release instead."""
        for name in names:
            name = check_unit_name(name)
            self._held.add(name)
            self._pending.pop(name, None)
            if name in self._names:
                continue  # watched already: its state is the watch's own
            self._names.add(name)
            state = known.get(name)
            if state is not None and state.load_state == "loaded":
                self._known[name] = state
            else:
                self._stale.add(name)

    def restale(self, names: Iterable[str]) -> None:
        """Held units whose signals may have been missed: read at their release."""
        self._stale.update(n for n in names if n in self._held)

    def release(self, name: str) -> None:
        """The unit's job has ended: deliver its state (systemd sends a unit's pending
        PropertiesChanged before the JobRemoved of its job, so the watch has it already), or
        read it if the load state is not known to be "loaded"."""
        if name not in self._held:
            return
        self._held.discard(name)
        if name not in self._names or self._closed:
            return
        known = self._known.get(name)
        if name in self._stale or known is None or known.load_state != "loaded":
            self._stale.discard(name)
            self._signal_gen[name] += 1  # a read begun before now must not win over this one
            self._spawn(self._refresh({name}))
            return
        self._pending[name] = known
        self._wakeup.set()

    def _offer(self, state: UnitSystemdState) -> None:
        if state.name not in self._names or self._known.get(state.name) == state:
            return
        self._known[state.name] = state
        if state.name in self._held:
            self._stale.discard(state.name)  # a read (of the whole state) or a loaded unit's signal
            return
        self._pending[state.name] = state
        self._wakeup.set()

    def _properties_changed(self, name: str, values: dict[str, str]) -> None:
        if name not in self._names or not values:
            return
        self._signal_gen[name] += 1
        old = self._known.get(name)
        load = values.get("LoadState") or (old.load_state if old is not None else None)
        if load != "loaded" and name in self._held:
            self._stale.add(name)  # read at its release
            return
        if load != "loaded":
            # The signal has no LoadState (systemd declares it constant) and the last one read
            # is not "loaded" (or none was read): the load state may have changed without a
            # signal (systemd loads a new unit from its cache without a daemon-reload). Read
            # the whole state instead of publishing a guess; a later signal supersedes the read.
            self._spawn(self._refresh({name}))
            return
        self._offer(UnitSystemdState(
            name,
            load,
            values.get("ActiveState", old.active_state if old else "inactive"),
            values.get("SubState", old.sub_state if old else "dead"),
        ))

    def _spawn(self, coro) -> None:
        if self._closed:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _unit_removed(self, name: str) -> None:
        # The unit left systemd's memory (garbage-collected, e.g. once its file is gone).
        # Asking systemd would load it again (and remove it again: a loop), so derive the
        # state: inactive, and not-found unless its file is still in the units directory.
        if name not in self._names:
            return
        self._signal_gen[name] += 1
        old = self._known.get(name)
        present = (self._manager.units_dir / name).exists()
        load = (old.load_state if old else "loaded") if present else "not-found"
        self._offer(UnitSystemdState(name, load, "inactive", "dead"))

    def _fail(self, error: SystemdError) -> None:
        if self._error is None and not self._closed:
            self._error = error
        self._wakeup.set()

    def close(self) -> None:
        # its units' match rules stay (no bus call here: the connection usually closes with it)
        self._closed = True
        self._manager._watches.discard(self)
        for task in self._tasks:
            task.cancel()
        self._wakeup.set()

    def __aiter__(self) -> AsyncIterator[UnitSystemdState]:
        return self

    async def __anext__(self) -> UnitSystemdState:
        while True:
            if self._pending:
                _name, state = self._pending.popitem(last=False)
                return state
            if self._closed:
                raise StopAsyncIteration
            if self._error is not None:
                raise self._error
            self._wakeup.clear()
            await self._wakeup.wait()

    async def next(self, timeout: float | None = None) -> UnitSystemdState:
        """The next state, or asyncio.TimeoutError after `timeout` seconds.

        `timeout=0` returns a state already received, without waiting. At the end of the
        stream (closed) it raises StopAsyncIteration.
        """
        if self._pending:
            return self._pending.popitem(last=False)[1]
        if timeout is not None and timeout <= 0:
            if self._closed:
                raise StopAsyncIteration
            if self._error is not None:
                raise self._error
            raise asyncio.TimeoutError
        return await asyncio.wait_for(self.__anext__(), timeout)
