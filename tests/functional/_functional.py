"""Helpers of the functional lab suite (fleet's functional/ scenarios, ported to fleetlab).

`Fleet` wraps a lab with fleet-style observations, all through the real interfaces:
fleetctl (`--output json` of list-units/list-unit-files/list-machines), systemd inside the
nodes (`systemctl`), and etcdctl for what fleetctl does not show (the engine leader key, the
history of the schedule). Checks poll with a deadline (fleet: 15 s); nothing sleeps a fixed
time as an assertion. `barrier()` proves that the engine and an agent have run a pass after
some change, so that "nothing else happened" can be asserted without sleeping.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

from fleetd.errors import LabError

DEADLINE = 15.0  # fleet's functional tests poll for up to 15 s
POLL = 0.25
TRACE = bool(os.environ.get("FUNCTIONAL_TRACE"))  # print how long every wait took

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T], timeout: float = DEADLINE, interval: float = POLL) -> T:
    """Poll `probe` until it returns a truthy value; fail naming `what` and the last value seen.

    A probe that fails (e.g. fleetctl while etcd elects a new leader) counts as not yet."""
    started = time.monotonic()
    deadline = started + timeout
    last: object = None
    while True:
        try:
            last = probe()
        except (AssertionError, LabError) as exc:
            last = None
            error = exc
        else:
            error = None
        if last:
            if TRACE:
                print(f"[{time.monotonic() - started:5.2f}s] {what}")
            return last
        if time.monotonic() > deadline:
            seen = f"last error: {error}" if error is not None else f"last seen: {last!r}"
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; {seen}")
        time.sleep(interval)


def unit_body(description: str, *, sleep: int = 3, unit: Sequence[str] = (), service: Sequence[str] = (),
              xfleet: Sequence[str] = (), install: Sequence[str] = ()) -> str:
    """A fleet fixture unit in canonical form (`[Section]\\nKey=Value\\n`, blank line between)."""
    sections = [["[Unit]", f"Description={description}", *unit],
                ["[Service]", f'ExecStart=/bin/sh -c "while true; do echo {description}; sleep {sleep}; done"',
                 *service]]
    if install:
        sections.append(["[Install]", *install])
    if xfleet:
        sections.append(["[X-Fleet]", *xfleet])
    return "\n".join("\n".join(lines) + "\n" for lines in sections)


@dataclass(frozen=True)
class State:
    """One row of `fleetctl list-units`."""

    name: str
    machine_id: str
    load: str
    active: str
    sub: str
    hash: str


@dataclass(frozen=True)
class UnitFileRow:
    """One row of `fleetctl list-unit-files`."""

    name: str
    hash: str
    desired: str
    current: str | None
    machine_id: str | None
    is_global: bool


class Fleet:
    """fleet-style views and actions on one lab. `dir` receives the unit files tests write."""

    _serial = itertools.count(1)

    def __init__(self, lab, directory: Path):
        self.lab = lab
        self.dir = directory
        self.metadata_set: set[tuple[str, str]] = set()

    # ---------------------------------------------------------------- fleetctl

    def ctl(self, *args: str, check: bool = True, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        proc = self.lab.fleetctl(*args, check=False, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"fleetctl {' '.join(args)}: exit {proc.returncode}\n"
                                 f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def _json(self, *args: str) -> list[dict]:
        return json.loads(self.ctl(*args, "--output", "json").stdout or "[]")

    def write(self, name: str, body: str) -> str:
        path = self.dir / name
        path.write_text(body)
        return str(path)

    def states(self) -> list[State]:
        return [State(s["name"], s["machineID"], s["systemdLoadState"], s["systemdActiveState"],
                      s["systemdSubState"], s["hash"]) for s in self._json("list-units")]

    def unit_files(self) -> dict[str, UnitFileRow]:
        return {u["name"]: UnitFileRow(u["name"], u["hash"], u["desiredState"], u["currentState"], u["machineID"],
                                       u["global"]) for u in self._json("list-unit-files")}

    def machines(self) -> dict[str, dict]:
        return {m["id"]: m for m in self._json("list-machines")}

    def active(self) -> dict[str, list[str]]:
        """Active units (as fleet reports them): name -> machine IDs (several for a global unit)."""
        out: dict[str, list[str]] = {}
        for s in self.states():
            if s.active == "active":
                out.setdefault(s.name, []).append(s.machine_id)
        return out

    def wait_machines(self, count: int, timeout: float = DEADLINE) -> dict[str, dict]:
        return wait_for(f"{count} machines in list-machines",
                        lambda: (lambda m: m if len(m) == count else None)(self.machines()), timeout)

    def wait_active(self, count: int, timeout: float = DEADLINE) -> dict[str, list[str]]:
        """fleet's WaitForNActiveUnits: until exactly `count` active rows are listed."""
        def probe():
            active = self.active()
            return active if sum(len(v) for v in active.values()) == count else None

        return wait_for(f"{count} active units in list-units", probe, timeout)

    @staticmethod
    def single(active: dict[str, list[str]]) -> dict[str, str]:
        """fleet's ActiveToSingleStates: every unit active on exactly one machine."""
        doubles = {n: m for n, m in active.items() if len(m) != 1}
        assert not doubles, f"units active on more than one machine: {doubles}"
        return {n: m[0] for n, m in active.items()}

    # ---------------------------------------------------------------- nodes and systemd

    def node_of(self, machine_id: str):
        for node in self.lab.nodes:
            if node.machine_id == machine_id:
                return node
        raise AssertionError(f"no lab node has machine ID {machine_id}")

    def running_nodes(self):
        return [n for n in self.lab.nodes if n.running]

    def systemd(self, node, names: Sequence[str], prop: str = "ActiveState") -> dict[str, str]:
        """`systemctl show -p PROP --value` for each unit on `node` (one exec)."""
        if not names:
            return {}
        proc = node.exec(["systemctl", "show", "-p", prop, *names], check=False)
        blocks = proc.stdout.rstrip("\n").split("\n\n")  # one block per unit, in argument order
        if len(blocks) != len(names):
            raise AssertionError(f"systemctl show on {node.name}: {len(blocks)} blocks for {len(names)} units: "
                                 f"{proc.stdout!r} {proc.stderr!r}")
        return {name: block.partition("=")[2] for name, block in zip(names, blocks)}

    def copies(self, names: Sequence[str]) -> dict[str, list[str]]:
        """Where systemd really runs each unit: name -> names of the nodes where it is active."""
        where: dict[str, list[str]] = {n: [] for n in names}
        for node in self.running_nodes():
            for name, state in self.systemd(node, names).items():
                if state in ("active", "activating", "reloading"):
                    where[name].append(node.name)
        return where

    def assert_runs_once(self, names: Sequence[str]) -> dict[str, str]:
        """Every unit runs in systemd on exactly one node; returns name -> node name."""
        where = self.copies(names)
        wrong = {n: nodes for n, nodes in where.items() if len(nodes) != 1}
        assert not wrong, f"units not running exactly once (systemd on every node): {wrong}"
        return {n: nodes[0] for n, nodes in where.items()}

    def wait_runs_once(self, names: Sequence[str], timeout: float = DEADLINE) -> dict[str, str]:
        def probe():
            where = self.copies(names)
            return {n: v[0] for n, v in where.items()} if all(len(v) == 1 for v in where.values()) else None

        return wait_for(f"{list(names)} running exactly once in systemd", probe, timeout)

    def fleet_units_on(self, node) -> list[str]:
        """Unit files the node's agent has in its units directory."""
        proc = node.exec(["ls", "-1", "/run/fleet/units"], check=False)
        return sorted(line for line in proc.stdout.split() if line and not line.startswith("."))

    # ---------------------------------------------------------------- barrier

    def barrier(self, machine_metadata: str | None = None, timeout: float = DEADLINE) -> str:
        """Start a fresh unconstrained unit and wait until it is active, then destroy it.

        The engine placed it in a pass that saw every earlier change (etcd is linearizable),
        and the agent that started it ran a full pass: anything that pass would have done to
        the units under test is done. With `machine_metadata` (e.g. `hostname=lab-n2`) the
        agent of that machine is the one made to run a pass. Returns the barrier's machine ID.
        """
        name = f"zz-barrier-{next(self._serial)}.service"
        xfleet = [f"MachineMetadata={machine_metadata}"] if machine_metadata else []
        path = self.write(name, unit_body(f"barrier {name}", sleep=30, xfleet=xfleet))
        self.ctl("start", "--no-block", path)
        active = wait_for(f"barrier {name} active", lambda: self.active().get(name), timeout)
        self.ctl("destroy", name)  # returns once the unit is deleted, before its agent unloads it
        wait_for(f"barrier {name} gone from the unit states", lambda: name not in self.active(), timeout)
        return active[0]

    # ---------------------------------------------------------------- etcd

    def etcdctl(self, *args: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.lab.env()}
        return subprocess.run(["etcdctl", "--dial-timeout=2s", "--command-timeout=3s", *args], env=env,
                              capture_output=True, text=True, timeout=timeout)

    def etcd_leader_off(self, node) -> None:
        """Make sure etcd's raft leader is not the member on `node` (move it if it is), so that
        losing `node` does not also cost an etcd election and the lease extension that comes
        with it (etcd renews every lease when a new raft leader takes over)."""
        self._move_etcd_leader(node, onto=False)

    def etcd_leader_on(self, node) -> None:
        """Make the member on `node` etcd's raft leader."""
        self._move_etcd_leader(node, onto=True)

    def _move_etcd_leader(self, node, onto: bool) -> None:
        # move-leader is for etcd's root user: the lab's root certificate instead of the operator's
        env = {k: v for k, v in {**os.environ, **self.lab.env()}.items() if not k.startswith("ETCDCTL_")}
        env["ETCDCTL_API"] = "3"
        tls = self.lab.etcd_tls.args() if self.lab.etcd_tls else []
        endpoints = self.lab.etcd_endpoints
        proc = subprocess.run(["etcdctl", f"--endpoints={','.join(endpoints)}", *tls, "endpoint", "status", "-w", "json"],
                              env=env, capture_output=True, text=True, timeout=15)
        status = {e["Endpoint"]: e["Status"] for e in json.loads(proc.stdout)}
        leader_id = next(iter(status.values()))["leader"]
        leader_ep = next(ep for ep, st in status.items() if st["header"]["member_id"] == leader_id)
        mine = next(ep for ep in endpoints if f"//{node.ip}:" in ep)
        if (leader_ep == mine) == onto:
            return
        target = next(st["header"]["member_id"] for ep, st in status.items()
                      if (ep == mine if onto else ep != leader_ep))
        moved = subprocess.run(["etcdctl", f"--endpoints={leader_ep}", *tls, "move-leader", f"{target:x}"],
                               env=env, capture_output=True, text=True, timeout=15)
        assert moved.returncode == 0, f"etcdctl move-leader: {moved.stderr}"

    @property
    def prefix(self) -> str:
        return self.lab.env()["FLEETCTL_ETCD_KEY_PREFIX"]

    def leader(self) -> str | None:
        """Machine ID in `<prefix>lease/engine-leader`, or None (no leader or etcd unreachable)."""
        proc = self.etcdctl("get", f"{self.prefix}lease/engine-leader", "--print-value-only")
        value = proc.stdout.strip() if proc.returncode == 0 else ""
        return value or None

    def revision(self) -> int:
        proc = self.etcdctl("get", f"{self.prefix}lease/engine-leader", "-w", "json")
        return int(json.loads(proc.stdout)["header"]["revision"])

    def history(self, key_prefix: str, since: int) -> list[dict]:
        """Every change below `<prefix><key_prefix>` after revision `since` (etcd watch replay):
        dicts with type (PUT/DELETE), key (without the fleet prefix) and revision."""
        full = f"{self.prefix}{key_prefix}"
        try:
            proc = subprocess.run(
                ["timeout", "2", "etcdctl", "watch", "--prefix", full, f"--rev={since + 1}", "-w", "json"],
                env={**os.environ, **self.lab.env()}, capture_output=True, text=True, timeout=15)
            out = proc.stdout
        except subprocess.TimeoutExpired as exc:  # pragma: no cover - `timeout` ends it first
            out = exc.stdout or ""
        events = []
        for line in out.splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            for ev in json.loads(line).get("Events") or []:
                kv = ev["kv"]
                events.append({
                    "type": "DELETE" if ev.get("type") == 1 else "PUT",
                    "key": base64.b64decode(kv["key"]).decode()[len(self.prefix):],
                    "revision": int(kv["mod_revision"]),
                })
        return events

    def placements(self, revision: int | None = None) -> dict[str, set[str]]:
        """The engine's schedule in etcd (at `revision`, default now): unit -> machine IDs."""
        base = f"{self.prefix}schedule/"
        args = ["get", "--prefix", "--keys-only", base] + ([f"--rev={revision}"] if revision else [])
        proc = self.etcdctl(*args)
        assert proc.returncode == 0, f"etcdctl get {base}: {proc.stderr}"
        out: dict[str, set[str]] = {}
        for key in proc.stdout.split():
            machine, _, name = key[len(base):].partition("/")
            out.setdefault(name, set()).add(machine)
        return out

    def most_placements(self, since: int) -> dict[str, int]:
        """Replay the schedule from revision `since` to now: for every unit, the largest number of
        machines it was placed on at the same time (1 = never a duplicate placement)."""
        current = self.placements(since)
        most = {name: len(machines) for name, machines in current.items()}
        events = self.history("schedule/", since)
        for revision in sorted({e["revision"] for e in events}):
            for e in (e for e in events if e["revision"] == revision):
                machine, _, name = e["key"][len("schedule/"):].partition("/")
                if e["type"] == "PUT":
                    current.setdefault(name, set()).add(machine)
                else:
                    current.get(name, set()).discard(machine)
            for name, machines in current.items():
                most[name] = max(most.get(name, 0), len(machines))
        return most

    def engine_lease(self) -> int:
        """The ID of the lease the engine leader's key hangs on."""
        proc = self.etcdctl("get", f"{self.prefix}lease/engine-leader", "-w", "json")
        kvs = json.loads(proc.stdout).get("kvs") or []
        assert kvs, "no engine leader key"
        return int(kvs[0]["lease"])

    def lease_time_to_live(self, lease: int) -> tuple[float, float]:
        """(granted TTL, remaining TTL) of a lease; the remaining TTL is <= 0 once it expired."""
        proc = self.etcdctl("lease", "timetolive", f"{lease:x}", "-w", "json")
        info = json.loads(proc.stdout)
        return float(info.get("granted-ttl", 0)), float(info.get("ttl", -1))

    def engine_lease_ttl(self) -> float:
        """The TTL granted to the engine leader's lease (read from etcd)."""
        return self.lease_time_to_live(self.engine_lease())[0]

    def machine_lease(self, machine_id: str) -> int:
        """The lease ID a machine's presence record hangs on."""
        proc = self.etcdctl("get", f"{self.prefix}machines/{machine_id}/object", "-w", "json")
        kvs = json.loads(proc.stdout).get("kvs") or []
        assert kvs, f"machine {machine_id} has no presence record"
        return int(kvs[0]["lease"])

    # ---------------------------------------------------------------- dynamic metadata

    def set_metadata(self, machine_id: str, key: str, value: str) -> None:
        self.ctl("set-metadata", machine_id, f"{key}={value}")
        self.metadata_set.add((machine_id, key))

    # ---------------------------------------------------------------- restore

    def restore(self) -> None:
        """Make the lab whole again and empty: nodes up, no partition, fleetd everywhere, no units."""
        lab = self.lab
        for node in lab.nodes:
            if node.state.partitioned:
                node.heal()
        for node in lab.nodes:
            if not node.running:
                node.start()
        for node in lab.nodes:
            if node.exec(["systemctl", "is-active", "fleetd.service"], check=False).stdout.strip() != "active":
                node.start_fleetd()
        lab.wait_etcd_healthy(timeout=60)
        self.wait_machines(len(lab.nodes), timeout=60)
        for machine_id, key in sorted(self.metadata_set):
            self.ctl("set-metadata", machine_id, f"{key}=")
        self.metadata_set.clear()
        for machine_id, m in self.machines().items():
            if m.get("draining"):
                self.ctl("undrain", machine_id)
        names = sorted(self.unit_files())
        if names:
            self.ctl("destroy", *names)
        wait_for("every unit gone from list-units", lambda: not self.states(), timeout=30)
        wait_for("every node's units directory empty",
                 lambda: all(not self.fleet_units_on(n) for n in lab.nodes), timeout=30)


def counts(values: Iterable[str]) -> list[int]:
    return sorted(Counter(values).values())
