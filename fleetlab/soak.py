"""A chaos soak on a real lab (`fleet-lab soak --seed N --minutes M`, tests/test_soak_lab.py).

A lab of 4 nodes (3 etcd members on nodes 1-3) runs 50+ units: plain services, container units
(busybox, imported on every node), global units, Conflicts= units and MachineOf= pairs, while
a churn thread starts, stops and destroys a pool of other units, and a driver injects faults
from a schedule seeded with `seed` (every kind once, in a seeded order, then again):

    node-crash        SIGKILL a node's init, boot it again 3-12 s later
    fleetd-sigkill    SIGKILL fleetd (systemd restarts it)
    fleetd-sigterm    `systemctl stop fleetd`, start it again after 1-2 TTLs
    partition         cut a node off the network for 0.5-3 TTLs, heal
    etcd-partition    cut one etcd member off its peers and clients (iptables on 2379/2380)
    etcd-leader-crash SIGKILL etcd's raft leader (systemd restarts it)
    etcd-outage-short SIGSTOP every etcd member for less than the TTL, SIGCONT
    etcd-outage-long  SIGSTOP every etcd member for 1.5-3 TTLs, SIGCONT
    engine-leader-crash  crash the node of the engine leader, boot it again

Invariants, from the nodes' own systemd (never from etcd):
- a non-global unit is never active on two nodes at once (sampled all along; a suspected
  double is sampled again before it counts);
- after each fault is undone every unit desired launched is active exactly once (global ones
  on every node) and no other soak unit is active, within CONVERGE_BOUND seconds;
- an outage of etcd alone (the etcd-* kinds) restarts no unit: same node, same MainPID;
- at the end (churn stopped, its units destroyed) no node keeps a unit file of a unit it does
  not run.

The report: faults by kind, convergence time after each (p50/max), violations (with the
history of faults up to each), the seed.
"""

from __future__ import annotations

import random
import secrets
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fleetd.errors import LabError

from .config import ETCD_UNIT, FLEETD_UNIT
from .etcd import etcdctl
from .lab import Lab
from .network import NETNS_DIR

Log = Callable[[str], None]

KINDS = ("node-crash", "fleetd-sigkill", "fleetd-sigterm", "partition", "etcd-partition", "etcd-leader-crash",
         "etcd-outage-short", "etcd-outage-long", "engine-leader-crash")
ETCD_ONLY = frozenset({"etcd-partition", "etcd-leader-crash", "etcd-outage-short", "etcd-outage-long"})
CONVERGE_BOUND = 120.0  # seconds after a fault is undone
MONITOR_INTERVAL = 0.5
RUNNING = ("active", "activating", "reloading")
UNITS_DIR = "/run/fleet/units"


def _quiet(_: str) -> None:
    return None


def _body(description: str, xfleet: list[str] = ()) -> str:
    text = (f"[Unit]\nDescription={description}\n\n[Service]\n"
            f'ExecStart=/bin/sh -c "while true; do sleep 5; done"\n')
    if xfleet:
        text += "\n[X-Fleet]\n" + "\n".join(xfleet) + "\n"
    return text


def _container(description: str) -> str:
    return (f"[Unit]\nDescription={description}\n\n[X-Container]\nImage=busybox\nCommand=sleep 100000\n"
            f"StopTimeout=3\n")


@dataclass
class Fault:
    kind: str
    node: str
    injected: float  # seconds since the start of the soak
    undone: float = 0.0
    converged_after: float | None = None  # seconds from undone to converged; None: never
    detail: str = ""

    def line(self) -> str:
        conv = f"converged after {self.converged_after:.1f}s" if self.converged_after is not None else "NOT converged"
        return f"t={self.injected:6.1f}s {self.kind:<19} {self.node:<12} {self.detail:<28} {conv}"


@dataclass
class Soak:
    lab: Lab
    seed: int
    minutes: float
    log: Log = _quiet
    ttl: float = 5.0
    containers: bool = True
    rng: random.Random = field(init=False)
    units: dict[str, str] = field(default_factory=dict)  # name -> body of the base units
    globals_: set[str] = field(default_factory=set)
    churn_pool: list[str] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    churn_ops: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _churn_pause: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _t0: float = 0.0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.workdir = Path(tempfile.mkdtemp(prefix="fleet-soak-"))

    # ------------------------------------------------------------------ helpers

    def now(self) -> float:
        return time.monotonic() - self._t0

    def violation(self, text: str) -> None:
        history = "; ".join(f.line() for f in self.faults[-3:])
        with self._lock:
            self.violations.append(f"t={self.now():.1f}s {text} (last faults: {history or 'none'})")
        self.log(f"VIOLATION: {text}")

    def ctl(self, *args: str, check: bool = False, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        try:
            return self.lab.fleetctl(*args, check=check, timeout=timeout)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(args, 124, "", "timeout")

    def write(self, name: str, body: str) -> str:
        path = self.workdir / name
        path.write_text(body)
        return str(path)

    def running_on(self, node) -> dict[str, str]:
        """soak unit -> ActiveState of the units systemd on `node` knows (loaded ones)."""
        proc = node.exec(["systemctl", "list-units", "--all", "--plain", "--no-legend", "--no-pager", "soak-*"],
                         check=False, timeout=30)
        out = {}
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0].startswith("soak-"):
                out[parts[0]] = parts[2]
        return out

    def active_map(self) -> dict[str, list[str]]:
        """unit -> node names where systemd runs it (running nodes only)."""
        where: dict[str, list[str]] = {}
        for node in self.lab.nodes:
            if not node.running:
                continue
            try:
                states = self.running_on(node)
            except (LabError, subprocess.TimeoutExpired):
                continue
            for name, state in states.items():
                if state in RUNNING:
                    where.setdefault(name, []).append(node.name)
        return where

    def pids(self) -> dict[str, tuple[str, str]]:
        """base non-global unit -> (node, MainPID)."""
        out: dict[str, tuple[str, str]] = {}
        names = sorted(n for n in self.units if n not in self.globals_)
        for node in self.lab.nodes:
            if not node.running:
                continue
            proc = node.exec(["systemctl", "show", "-p", "ActiveState", "-p", "MainPID", *names], check=False)
            for name, block in zip(names, proc.stdout.rstrip("\n").split("\n\n")):
                props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
                if props.get("ActiveState") in RUNNING:
                    out[name] = (node.name, props.get("MainPID", ""))
        return out

    def desired_launched(self) -> set[str] | None:
        proc = self.ctl("list-unit-files", "--no-legend", "--fields=unit,dstate", timeout=30)
        if proc.returncode != 0:
            return None
        out = set()
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1] == "launched":
                out.add(parts[0])
        return out

    # ------------------------------------------------------------------ set-up

    def define_units(self) -> None:
        for i in range(30):
            self.units[f"soak-p{i:02d}.service"] = _body(f"soak plain {i}")
        for i in range(4):
            name = f"soak-g{i}.service"
            self.units[name] = _body(f"soak global {i}", ["Global=true"])
            self.globals_.add(name)
        for i in range(3):
            self.units[f"soak-c{i}.service"] = _body(f"soak conflict {i}", ["Conflicts=soak-c*.service"])
        for i in range(4):
            self.units[f"soak-a{i}.service"] = _body(f"soak anchor {i}")
            self.units[f"soak-b{i}.service"] = _body(f"soak follower {i}", [f"MachineOf=soak-a{i}.service"])
        if self.containers:
            for i in range(4):
                self.units[f"soak-k{i}.service"] = _container(f"soak container {i}")
        self.churn_pool = [f"soak-x{i}.service" for i in range(6)]

    def import_image(self) -> None:
        from fleetd.images import build_busybox_image

        root = build_busybox_image(self.workdir / "busybox")
        for node in self.lab.nodes:
            self.lab.fleetctl("image", "import", str(root), "--name", "busybox", "--machine", node.machine_id,
                              timeout=180)

    def setup(self) -> None:
        self.define_units()
        if self.containers:
            self.log("importing busybox on every node")
            self.import_image()
        paths = [self.write(n, b) for n, b in sorted(self.units.items())]
        self.log(f"starting {len(paths)} units")
        self.lab.fleetctl("start", "--no-block", *paths, timeout=180)
        took = self.wait_converged(CONVERGE_BOUND * 2)
        if took is None:
            raise LabError(f"soak: the {len(paths)} units did not converge after the start: {self.why_not()}")
        self.log(f"{len(paths)} units converged in {took:.1f}s")

    # ------------------------------------------------------------------ convergence

    def converged(self, include_churn: bool = False) -> bool:
        if not all(n.running for n in self.lab.nodes):
            return False
        desired = self.desired_launched()
        if desired is None:
            return False
        where = self.active_map()
        nodes = len(self.lab.nodes)
        for name in desired:
            if name in self.churn_pool and not include_churn:
                continue
            count = len(where.get(name, []))
            if count != (nodes if name in self.globals_ else 1):
                return False
        for name in where:
            if name not in desired and (include_churn or name not in self.churn_pool):
                return False
        return True

    def why_not(self) -> str:
        desired = self.desired_launched() or set()
        where = self.active_map()
        wrong = {n: where.get(n, []) for n in sorted(desired) if n not in self.churn_pool
                 and len(where.get(n, [])) != (len(self.lab.nodes) if n in self.globals_ else 1)}
        extra = sorted(n for n in where if n not in desired and n not in self.churn_pool)
        return f"wrong copies {wrong}, running but not desired {extra}"

    def wait_converged(self, bound: float, include_churn: bool = False) -> float | None:
        started = time.monotonic()
        while time.monotonic() - started < bound:
            if self.converged(include_churn):
                return time.monotonic() - started
            time.sleep(0.5)
        return None

    # ------------------------------------------------------------------ background threads

    def monitor(self) -> None:
        """Never active on two nodes: sampled all along; a double is confirmed before it counts."""
        while not self._stop.is_set():
            where = self.active_map()
            self.samples += 1
            doubles = {n: v for n, v in where.items() if len(v) > 1 and n not in self.globals_}
            if doubles:
                again = self.active_map()
                for name, nodes in doubles.items():
                    if len(again.get(name, [])) > 1:
                        self.violation(f"{name} active on {again[name]} at once")
            self._stop.wait(MONITOR_INTERVAL)

    def churn(self) -> None:
        while not self._stop.is_set():
            if self._churn_pause.is_set():
                self._stop.wait(0.5)
                continue
            name = self.rng_churn.choice(self.churn_pool)
            op = self.rng_churn.choice(["start", "start", "stop", "destroy"])
            if op == "start":
                self.ctl("start", "--no-block", self.write(name, _body(f"soak churn {name}")), timeout=30)
            else:
                self.ctl(op, "--no-block", name, timeout=30) if op == "stop" else self.ctl(op, name, timeout=30)
            self.churn_ops += 1
            self._stop.wait(self.rng_churn.uniform(0.5, 2.0))

    # ------------------------------------------------------------------ faults

    def etcd_nodes(self):
        ips = {m.ip for m in self.lab.etcd_members}
        return [n for n in self.lab.nodes if n.ip in ips]

    def etcd_signal(self, sig: str) -> None:
        for node in self.etcd_nodes():
            node.exec(["systemctl", "kill", "-s", sig, ETCD_UNIT], check=False)

    def engine_leader_node(self):
        prefix = self.lab.env()["FLEETCTL_ETCD_KEY_PREFIX"]
        proc = etcdctl(self.lab.etcd_endpoints, "get", f"{prefix}lease/engine-leader", "--print-value-only",
                       check=False)
        leader = proc.stdout.strip()
        for node in self.lab.nodes:
            if node.machine_id == leader:
                return node
        return None

    def etcd_leader(self):
        from .bench.common import etcd_leader_node

        return etcd_leader_node(self.lab)

    def etcd_member_cut(self, node, cut: bool) -> None:
        action = "-I" if cut else "-D"
        for chain, direction in (("INPUT", "--dport"), ("OUTPUT", "--dport")):
            for port in ("2379", "2380") if chain == "INPUT" else ("2380",):
                subprocess.run(["nsenter", f"--net={NETNS_DIR / node.netns}", "iptables", "-w", action, chain,
                                "-p", "tcp", direction, port, "-j", "DROP"], capture_output=True, timeout=30)

    def inject(self, kind: str) -> Fault:
        rng, ttl = self.rng, self.ttl
        nodes = self.lab.nodes
        node = rng.choice(nodes)
        fault = Fault(kind, node.name, self.now())
        if kind == "node-crash":
            hold = rng.uniform(3, 12)
            node.kill()
            time.sleep(hold)
            node.start()
            fault.detail = f"down {hold:.1f}s"
        elif kind == "fleetd-sigkill":
            node.exec(["systemctl", "kill", "-s", "SIGKILL", FLEETD_UNIT], check=False)
        elif kind == "fleetd-sigterm":
            hold = rng.uniform(1, 2) * ttl
            node.exec(["systemctl", "stop", FLEETD_UNIT], check=False)
            time.sleep(hold)
            node.exec(["systemctl", "start", FLEETD_UNIT], check=False, timeout=120)
            fault.detail = f"stopped {hold:.1f}s"
        elif kind == "partition":
            hold = rng.uniform(0.5, 3) * ttl
            node.partition()
            time.sleep(hold)
            node.heal()
            fault.detail = f"cut {hold:.1f}s"
        elif kind == "etcd-partition":
            node = rng.choice(self.etcd_nodes())
            fault.node = node.name
            hold = rng.uniform(0.5, 3) * ttl
            self.etcd_member_cut(node, True)
            try:
                time.sleep(hold)
            finally:
                self.etcd_member_cut(node, False)
            fault.detail = f"member cut {hold:.1f}s"
        elif kind == "etcd-leader-crash":
            node = self.etcd_leader() or rng.choice(self.etcd_nodes())
            fault.node = node.name
            node.exec(["systemctl", "kill", "-s", "SIGKILL", ETCD_UNIT], check=False)
        elif kind in ("etcd-outage-short", "etcd-outage-long"):
            hold = rng.uniform(0.3, 0.8) * ttl if kind.endswith("short") else rng.uniform(1.5, 3) * ttl
            fault.node = "all members"
            self.etcd_signal("SIGSTOP")
            try:
                time.sleep(hold)
            finally:
                self.etcd_signal("SIGCONT")
            fault.detail = f"frozen {hold:.1f}s"
        elif kind == "engine-leader-crash":
            node = self.engine_leader_node() or node
            fault.node = node.name
            hold = rng.uniform(3, 8)
            node.kill()
            time.sleep(hold)
            node.start()
            fault.detail = f"down {hold:.1f}s"
        else:
            raise ValueError(kind)
        fault.undone = self.now()
        return fault

    def one_fault(self, kind: str) -> None:
        before = self.pids() if kind in ETCD_ONLY else None
        self.log(f"fault: {kind}")
        fault = self.inject(kind)
        self.faults.append(fault)
        took = self.wait_converged(CONVERGE_BOUND)
        fault.converged_after = took
        if took is None:
            self.violation(f"no convergence within {CONVERGE_BOUND:g}s after {kind} on {fault.node}: {self.why_not()}")
            return
        if before is not None:
            after = self.pids()
            changed = sorted(n for n in before if after.get(n) != before[n])
            if changed:
                self.violation(f"{kind} (etcd alone) restarted or moved {len(changed)} units: "
                               + ", ".join(f"{n} {before[n]}->{after.get(n)}" for n in changed[:5]))
        self.log(fault.line())

    # ------------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        self._t0 = time.monotonic()
        self.rng_churn = random.Random(self.seed + 1)
        self.setup()
        threads = [threading.Thread(target=self.monitor, name="soak-monitor", daemon=True),
                   threading.Thread(target=self.churn, name="soak-churn", daemon=True)]
        for t in threads:
            t.start()
        end = time.monotonic() + self.minutes * 60
        schedule: list[str] = []
        try:
            while time.monotonic() < end:
                if not schedule:
                    schedule = list(KINDS)
                    self.rng.shuffle(schedule)
                self.one_fault(schedule.pop(0))
                time.sleep(self.rng.uniform(1, 3))
        finally:
            self._churn_pause.set()
        # the end: churn stopped and its units destroyed, everything converges, no file left
        time.sleep(1.0)
        self.ctl("destroy", *self.churn_pool, timeout=60)
        if self.wait_converged(CONVERGE_BOUND, include_churn=True) is None:
            self.violation(f"no final convergence: {self.why_not()}")
        self._stop.set()
        for t in threads:
            t.join(timeout=30)
        self.check_leftovers()
        return self.report()

    def check_leftovers(self) -> None:
        where = self.active_map()
        for node in self.lab.nodes:
            proc = node.exec(["ls", "-1", UNITS_DIR], check=False)
            files = {f for f in proc.stdout.split() if f.startswith("soak-")}
            for name in sorted(files):
                if name not in self.globals_ and node.name not in where.get(name, []):
                    self.violation(f"unit file {name} left on {node.name}, which does not run it")

    def report(self) -> dict[str, Any]:
        by_kind: dict[str, int] = {}
        for f in self.faults:
            by_kind[f.kind] = by_kind.get(f.kind, 0) + 1
        times = [f.converged_after for f in self.faults if f.converged_after is not None]
        return {
            "seed": self.seed,
            "minutes": self.minutes,
            "nodes": len(self.lab.nodes),
            "units": len(self.units) + len(self.churn_pool),
            "faults": len(self.faults),
            "faults_by_kind": by_kind,
            "convergence_p50_s": round(statistics.median(times), 1) if times else None,
            "convergence_max_s": round(max(times), 1) if times else None,
            "churn_operations": self.churn_ops,
            "monitor_samples": self.samples,
            "violations": list(self.violations),
            "history": [f.line() for f in self.faults],
            "replay": f"fleet-lab soak --seed {self.seed} --minutes {self.minutes:g}",
        }


def report_text(result: dict[str, Any]) -> list[str]:
    lines = [f"soak seed {result['seed']}: {result['faults']} faults in {result['minutes']:g} min, "
             f"{result['nodes']} nodes, {result['units']} units, {result['churn_operations']} churn operations, "
             f"{result['monitor_samples']} samples of every node's systemd"]
    lines.append("faults by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(result["faults_by_kind"].items())))
    lines.append(f"convergence after a fault: p50 {result['convergence_p50_s']}s, max {result['convergence_max_s']}s")
    lines.append(f"violations: {len(result['violations'])}")
    for v in result["violations"]:
        lines.append(f"  {v}")
    if result["violations"]:
        lines.append("history:")
        lines.extend(f"  {h}" for h in result["history"])
    lines.append(f"replay: {result['replay']}")
    return lines


def soak(*, seed: int | None = None, minutes: float = 3.0, nodes: int = 4, agent_ttl: str = "5s",
         containers: bool = True, name: str | None = None, keep_lab: str | None = None,
         log: Log = _quiet) -> dict[str, Any]:
    """Boot a lab (always torn down; or use `keep_lab`, left running) and soak it."""
    from fleetd.config import parse_duration

    seed = seed if seed is not None else secrets.randbelow(1_000_000)
    if keep_lab:
        lab = Lab.attach(keep_lab)
        lab.wait_fleetd(timeout=60)
        return Soak(lab, seed, minutes, log, ttl=parse_duration(lab.agent_ttl, "agent_ttl"),
                    containers=containers).run()
    lab = Lab(name or f"so-{secrets.token_hex(3)}", nodes=nodes, agent_ttl=agent_ttl)
    log(f"booting lab {lab.name}: {nodes} nodes, agent_ttl {agent_ttl}, seed {seed}")
    try:
        lab.up(wait_fleetd=True, fleetd_timeout=90)
        return Soak(lab, seed, minutes, log, ttl=parse_duration(agent_ttl, "agent_ttl"), containers=containers).run()
    finally:
        warnings = lab.down()
        log(f"lab {lab.name} down" + (f" (warnings: {'; '.join(warnings)})" if warnings else ""))
