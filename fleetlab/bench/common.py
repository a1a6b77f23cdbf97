"""What the lab benchmarks share: a lab of their own (always torn down), the client library
pointed at it, an etcd event log with local timestamps, and small helpers.

Timing runs in one asyncio loop; every blocking lab operation (nsenter, SIGKILL of a node,
fleetctl as a process) goes through `blocking()` so that the event log keeps stamping
events while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence

from fleetd.config import EtcdSettings
from fleetd.errors import BenchmarkError, FleetError, LabError, RegistryError
from fleetd.model import DesiredState, Unit
from fleetd.registry import Registry, WatchEvent
from fleetd.registry import codec
from fleetd.unit.file import UnitFile
from fleetctl.client import UnitInfo
from fleetctl.etcd_client import EtcdFleetClient

from ..config import ETCD_UNIT, FLEETD_UNIT
from ..etcd import etcdctl
from ..lab import Lab
from ..node import Node

Log = Callable[[str], None]

LAUNCHED = DesiredState.LAUNCHED.value


def quiet(_: str) -> None:
    return None


def load_average() -> list[float]:
    """The host's 1, 5 and 15 minute load averages (2-core machine: 2.0 is full)."""
    return [round(x, 2) for x in os.getloadavg()]


def conditions() -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpus": os.cpu_count(),
        "load_average": load_average(),
    }


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p95 of 20 values is the 19th smallest)."""
    if not values:
        raise BenchmarkError("percentile of no values")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summary(values: Sequence[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "p50": round(percentile(values, 0.5), 3),
        "p95": round(percentile(values, 0.95), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def unit_file(name: str) -> UnitFile:
    """A benchmark unit: a service that is active as soon as it is forked."""
    return UnitFile.parse(f"[Unit]\nDescription=fleet benchmark {name}\n\n[Service]\nExecStart=/bin/sleep infinity\n")


def new_tag(kind: str) -> str:
    """A unit name prefix unique to this run (`b<kind>-<hex>`)."""
    return f"b{kind}-{secrets.token_hex(2)}"


# ---------------------------------------------------------------------------- the lab


def lab_name(kind: str) -> str:
    """A lab name unique to this run: `b<kind>-<6 hex>` (node names stay within 15 characters)."""
    return f"b{kind[:2]}-{secrets.token_hex(3)}"


@contextlib.contextmanager
def bench_lab(kind: str, *, nodes: int, agent_ttl: str, keep_lab: str | None, log: Log,
              insecure: bool = False) -> Iterator[Lab]:
    """A running lab with fleetd on every node: `keep_lab` (an existing lab, left running), or a
    new uniquely named one that is ALWAYS torn down, whatever happens in between."""
    if keep_lab:
        lab = Lab.attach(keep_lab)
        lab.wait_etcd_healthy(timeout=30)
        lab.wait_fleetd(timeout=60)
        log(f"using lab {lab.name} ({len(lab.nodes)} nodes, agent_ttl {lab.agent_ttl})")
        yield lab
        return
    lab = Lab(lab_name(kind), nodes=nodes, agent_ttl=agent_ttl, insecure=insecure)
    log(f"booting lab {lab.name}: {nodes} nodes, agent_ttl {agent_ttl}")
    try:
        started = time.monotonic()
        lab.up(wait_fleetd=True, fleetd_timeout=90)
        log(f"lab {lab.name} up in {time.monotonic() - started:.1f}s")
        yield lab
    finally:
        warnings = lab.down()
        log(f"lab {lab.name} down" + (f" (warnings: {'; '.join(warnings)})" if warnings else ""))
        if warnings:
            raise LabError(f"lab {lab.name}: teardown left things behind: {'; '.join(warnings)}")


def settings_for(lab: Lab, exclude: Iterable[Node] = ()) -> EtcdSettings:
    """etcd settings of the lab for the client, without the members of the `exclude`d nodes
    (a benchmark that kills a node keeps its own client off that node's member)."""
    excluded = {_endpoint_of(lab, n) for n in exclude}
    endpoints = tuple(ep for ep in lab.etcd_endpoints if ep not in excluded)
    if not endpoints:
        raise BenchmarkError(f"lab {lab.name}: no etcd member left outside {sorted(excluded)}")
    files = lab.client_files()  # the lab's operator certificate (etcd user with the fleet role)
    tls = dict(zip(("cafile", "certfile", "keyfile"), files)) if files else {}
    return EtcdSettings(endpoints=endpoints, key_prefix=lab.etcd_key_prefix, request_timeout=2.0, **tls)


def _endpoint_of(lab: Lab, node: Node) -> str:
    return f"{'http' if lab.insecure else 'https'}://{node.ip}:2379"


async def blocking(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking lab operation in a thread (the event loop keeps serving watches)."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def lab_ttl_seconds(lab: Lab) -> float:
    from fleetd.config import parse_duration

    return parse_duration(lab.agent_ttl, "agent_ttl")


@contextlib.asynccontextmanager
async def cleanup(*steps: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    """Run `steps` (destroy the benchmark's units, boot a killed node again) when the block
    ends. After an error, a cancellation or a signal they are best effort and bounded, so that
    their own failure never hides the error being raised."""
    try:
        yield
    except BaseException:
        for step in steps:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(step(), 90)
        raise
    for step in steps:
        await step()


# ---------------------------------------------------------------------------- the client


class Client:
    """The client library (etcd driver, as fleetctl uses it) plus a registry for reads that
    fleetctl does not do (the engine leader)."""

    def __init__(self, settings: EtcdSettings):
        self.settings = settings
        self.fleet = EtcdFleetClient(settings)
        self.registry: Registry | None = None

    async def __aenter__(self) -> "Client":
        self.registry = await Registry.connect(self.settings)
        await self.fleet.machines()  # connect now, not inside a timed section
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.fleet.close()
        if self.registry is not None:
            await self.registry.close()

    @property
    def reg(self) -> Registry:
        assert self.registry is not None
        return self.registry

    async def infos(self) -> dict[str, UnitInfo]:
        return {u.name: u for u in await self.fleet.units()}

    async def wait(self, check: Callable[[], Any], timeout: float, what: str) -> None:
        """Until `check()` (async, may fail while etcd elects) is true; woken by the client's
        etcd watch, with a 0.1 s poll as the safety net. Raises BenchmarkError on timeout."""

        async def guarded() -> bool:
            try:
                return bool(await check())
            except RegistryError:
                return False

        if not await self.fleet.wait(guarded, timeout, poll=0.1):
            raise BenchmarkError(f"timed out after {timeout:g}s waiting for {what}")

    async def launched(self, names: Sequence[str], *, not_on: str | None = None) -> dict[str, str] | None:
        """name -> machine if every unit's current state is launched (and, with `not_on`, on
        another machine than that one); else None."""
        infos = await self.infos()
        out = {}
        for name in names:
            info = infos.get(name)
            if info is None or info.current_state != LAUNCHED or (not_on and info.machine_id == not_on):
                return None
            out[name] = info.machine_id
        return out

    async def start_units(self, names: Sequence[str], timeout: float = 60.0) -> dict[str, str]:
        """Submit launched units in one batch and wait until all are launched."""
        await self.fleet.create_units([Unit(n, unit_file(n), DesiredState.LAUNCHED) for n in names])
        result: dict[str, str] = {}

        async def check() -> bool:
            got = await self.launched(names)
            if got:
                result.update(got)
            return bool(got)

        await self.wait(check, timeout, f"{len(names)} units launched")
        return result

    async def destroy(self, names: Sequence[str], timeout: float = 60.0) -> None:
        """Destroy units and wait until no machine reports a state for them any more."""
        if not names:
            return
        wanted = set(names)
        await self.fleet.destroy_units(list(names))

        async def gone() -> bool:
            return not any(s.name in wanted for s in await self.fleet.unit_states())

        await self.wait(gone, timeout, f"{len(names)} destroyed units gone from every machine")

    async def leader(self) -> str | None:
        holder, _ = await self.reg.leader()
        return holder

    async def wait_leader(self, timeout: float = 60.0) -> str:
        """The engine leader's machine ID, once there is one."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                holder = await self.leader()
            except RegistryError:
                holder = None
            if holder:
                return holder
            if time.monotonic() > deadline:
                raise BenchmarkError(f"no engine leader after {timeout:g}s")
            await asyncio.sleep(0.1)


# ---------------------------------------------------------------------------- etcd events


@dataclass(frozen=True)
class Seen:
    at: float  # time.monotonic() when this process received the event
    event: WatchEvent


@dataclass
class EventLog:
    """Every change below some prefixes, stamped when this process saw it (an etcd watch that
    resumes where it stopped if its etcd member goes away)."""

    registry: Registry
    prefixes: Sequence[str]
    events: list[Seen] = field(default_factory=list)
    _task: asyncio.Task | None = None
    _seen: set[tuple[str, int]] = field(default_factory=set)

    async def __aenter__(self) -> "EventLog":
        revision = await self.registry.current_revision()
        self._task = asyncio.create_task(self._run(revision + 1))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self, revision: int) -> None:
        while True:
            try:
                async for ev in self.registry.watch(self.prefixes, revision):
                    key = (ev.key, ev.revision)
                    if key in self._seen:  # replayed after a resume
                        continue
                    self._seen.add(key)
                    self.events.append(Seen(time.monotonic(), ev))
                    revision = ev.revision  # resume at this revision: a txn may hold more keys
            except asyncio.CancelledError:
                raise
            except FleetError:
                await asyncio.sleep(0.1)

    def first(self, since: float, match: Callable[[WatchEvent], bool]) -> float | None:
        """Seconds from `since` to the first event after it that matches, or None."""
        for seen in self.events:
            if seen.at >= since and match(seen.event):
                return seen.at - since
        return None

    def between(self, start: float, end: float, match: Callable[[WatchEvent], bool]) -> list[WatchEvent]:
        return [s.event for s in self.events if start <= s.at <= end and match(s.event)]


def state_of(event: WatchEvent):
    """The UnitState of a states/ PUT event, or None."""
    if event.value is None:
        return None
    try:
        return codec.decode_state(event.value)
    except (ValueError, KeyError):
        return None


def is_active_state(keys, name: str, machine_id: str | None = None, not_on: str | None = None):
    """Matcher: an active state of `name` published (on `machine_id`, or anywhere but `not_on`)."""
    prefix = keys.unit_states(name)

    def match(event: WatchEvent) -> bool:
        if not event.key.startswith(prefix):
            return False
        state = state_of(event)
        if state is None or state.active_state != "active":
            return False
        if machine_id and state.machine_id != machine_id:
            return False
        return not (not_on and state.machine_id == not_on)

    return match


def is_placement(keys, name: str, not_on: str | None = None):
    """Matcher: a schedule PUT of `name` (on any machine but `not_on`)."""

    def match(event: WatchEvent) -> bool:
        if event.value is None or not event.key.startswith(keys.schedule) or not event.key.endswith("/" + name):
            return False
        machine = event.key[len(keys.schedule):].partition("/")[0]
        return machine != not_on

    return match


# ---------------------------------------------------------------------------- nodes


def node_of(lab: Lab, machine_id: str) -> Node:
    for node in lab.nodes:
        if node.machine_id == machine_id:
            return node
    raise BenchmarkError(f"lab {lab.name}: no node has machine ID {machine_id}")


def systemd_active(node: Node, names: Sequence[str]) -> dict[str, str]:
    """ActiveState of each unit in the node's systemd (one `systemctl show`)."""
    if not names:
        return {}
    proc = node.exec(["systemctl", "show", "-p", "ActiveState", "--value", *names], check=False)
    values = proc.stdout.rstrip("\n").split("\n\n")  # one value per unit, blank line between
    if len(values) != len(names):
        raise BenchmarkError(f"node {node.name}: systemctl show answered {proc.stdout!r} {proc.stderr!r}")
    return dict(zip(names, (v.strip() for v in values)))


def running_copies(lab: Lab, names: Sequence[str]) -> dict[str, list[str]]:
    """Where systemd runs each unit: name -> node names where it is active."""
    where: dict[str, list[str]] = {n: [] for n in names}
    for node in lab.nodes:
        if not node.running:
            continue
        for name, state in systemd_active(node, names).items():
            if state == "active":
                where[name].append(node.name)
    return where


def service_pid(node: Node, unit: str) -> int:
    pid = node.exec(["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout.strip()
    if not pid.isdigit() or pid == "0":
        raise BenchmarkError(f"node {node.name}: {unit} has no main process")
    return int(pid)


def fleetd_pid(node: Node) -> int:
    return service_pid(node, FLEETD_UNIT)


def etcd_pid(node: Node) -> int:
    return service_pid(node, ETCD_UNIT)


# ---------------------------------------------------------------------------- etcd raft leader


def etcd_status(lab: Lab) -> dict[str, dict]:
    proc = etcdctl(lab.etcd_endpoints, "endpoint", "status", "-w", "json", check=False, tls=lab.etcd_tls)
    try:
        return {e["Endpoint"]: e["Status"] for e in json.loads(proc.stdout or "[]")}
    except (ValueError, KeyError, TypeError):
        return {}


def etcd_leader_node(lab: Lab) -> Node | None:
    status = etcd_status(lab)
    for endpoint, st in status.items():
        if st["header"]["member_id"] == st["leader"]:
            for node in lab.nodes:
                if endpoint == _endpoint_of(lab, node):
                    return node
    return None


def move_etcd_leader_off(lab: Lab, node: Node) -> bool:
    """Make sure etcd's raft leader is not the member on `node`; True if it had to be moved
    (etcd then extends every lease, which the holders' next keep-alive undoes)."""
    status = etcd_status(lab)
    if not status:
        raise BenchmarkError(f"lab {lab.name}: etcdctl endpoint status answered nothing")
    leader_id = next(iter(status.values()))["leader"]
    leader_ep = next((ep for ep, st in status.items() if st["header"]["member_id"] == leader_id), None)
    if leader_ep != _endpoint_of(lab, node):
        return False
    target = next(st["header"]["member_id"] for ep, st in status.items() if ep != leader_ep)
    etcdctl([leader_ep], "move-leader", f"{target:x}", tls=lab.etcd_tls)
    return True


def lease_ttl(lab: Lab, key: str) -> float:
    """The TTL granted to the lease that holds `key` (etcdctl)."""
    proc = etcdctl(lab.etcd_endpoints, "get", key, "-w", "json", tls=lab.etcd_tls)
    kvs = json.loads(proc.stdout).get("kvs") or []
    if not kvs:
        raise BenchmarkError(f"{key}: not in etcd")
    ttl = etcdctl(lab.etcd_endpoints, "lease", "timetolive", f"{int(kvs[0]['lease']):x}", "-w", "json",
                  tls=lab.etcd_tls)
    return float(json.loads(ttl.stdout)["granted-ttl"])


def first_times(events: EventLog, since: float, keys) -> tuple[dict[str, float], dict[str, float]]:
    """One pass over the log: for every unit, seconds from `since` to its first placement
    (schedule PUT) and to its first published active state."""
    placed: dict[str, float] = {}
    active: dict[str, float] = {}
    for seen in events.events:
        if seen.at < since or seen.event.value is None:
            continue
        key = seen.event.key
        if key.startswith(keys.schedule):
            name = key[len(keys.schedule):].partition("/")[2]
            placed.setdefault(name, seen.at - since)
        elif key.startswith(keys.states):
            state = state_of(seen.event)
            if state is not None and state.active_state == "active":
                active.setdefault(state.name, seen.at - since)
    return placed, active


def report_lines(value: Any, prefix: str = "") -> Iterator[str]:
    """`a.b: value` lines of a result; lists of dicts are numbered (`runs[0].victim: ...`)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from report_lines(item, f"{prefix}{key}.")
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, item in enumerate(value):
            yield from report_lines(item, f"{prefix.rstrip('.')}[{i}].")
    else:
        yield f"{prefix.rstrip('.')}: {value}"
