"""A handle on one node of a lab: run commands in it, crash it, boot it, cut its network."""

from __future__ import annotations

import shlex
import subprocess
import threading
from typing import TYPE_CHECKING, Sequence

from fleetd.errors import LabError

from . import boot
from .config import FLEETD_UNIT
from .network import set_partitioned
from .state import NodeState
from .sysutil import ProcRef, last_line, run

if TYPE_CHECKING:
    from .lab import Lab


class Node:
    def __init__(self, lab: "Lab", state: NodeState) -> None:
        self._lab = lab
        self.state = state

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.ip} init={self.init_pid}>"

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def index(self) -> int:
        return self.state.index

    @property
    def ip(self) -> str:
        return self.state.ip

    @property
    def machine_id(self) -> str:
        return self.state.machine_id

    @property
    def netns(self) -> str:
        return self.state.netns

    @property
    def init_pid(self) -> int | None:
        """Host PID of the node's systemd, or None if the node is not running."""
        init = self.state.init
        return init.pid if init is not None and init.alive() else None

    @property
    def running(self) -> bool:
        return self.init_pid is not None

    def system_state(self) -> str:
        """`systemctl is-system-running` inside the node ("offline" when its init is gone)."""
        return boot.system_state(self.state.init)

    def _init(self) -> ProcRef:
        init = self.state.init
        if init is None or not init.alive():
            raise LabError(f"node {self.name}: not running")
        return init

    def command(self, cmd: str | Sequence[str]) -> list[str]:
        """The host command line that runs `cmd` inside the node (a string goes to /bin/sh -c)."""
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        return boot.nsenter(self._init(), argv)

    def exec(
        self, cmd: str | Sequence[str], check: bool = True, timeout: float = 30.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` in all of the node's namespaces (nsenter -t INIT -a); output is captured."""
        proc = run(self.command(cmd), check=False, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            shown = cmd if isinstance(cmd, str) else shlex.join(cmd)
            raise LabError(f"node {self.name}: {shown}: exit {proc.returncode}: {last_line(proc)}")
        return proc

    def kill(self) -> None:
        """Crash the node: SIGKILL its init (PID 1 of its pid namespace). Its root is kept."""
        self._init()
        boot.crash(self._lab.names, self.state)
        self._lab.save()

    def stop(self, timeout: float = 10.0) -> None:
        """Halt the node cleanly (SIGTERM to systemd-nspawn), crashing it after `timeout`."""
        self._init()
        boot.halt(self._lab.names, self.state, timeout)
        self._lab.save()

    def spawn(self) -> None:
        """Start systemd-nspawn on the node's existing root; do not wait for the boot."""
        if self.running:
            raise LabError(f"node {self.name}: already running (init pid {self.init_pid})")
        boot.crash(self._lab.names, self.state)  # leftovers of a crashed node
        proc = boot.spawn(self._lab.names, self.state, read_only_binds=[str(self._lab.checkout)])
        threading.Thread(target=proc.wait, name=f"reap-{self.name}", daemon=True).start()
        log = self._lab.names.log_file(self.name)
        self.state.nspawn = ProcRef.of(proc.pid)
        if self.state.nspawn is None:
            raise LabError(f"node {self.name}: systemd-nspawn exited at once; see {log}")
        self._lab.save()
        try:
            self.state.init = boot.find_init(self.state.nspawn)
        except LabError as exc:
            raise LabError(f"node {self.name}: {exc}; see {log}") from None
        self._lab.save()

    def wait_running(self, timeout: float | None = None) -> str:
        return boot.wait_running(
            self.state, timeout or self._lab.boot_timeout, tolerate=self._lab.tolerated_units
        )

    def start(self, wait: bool = True) -> None:
        """Boot the node again (same root, upper dir and machine-id) and wait until it runs."""
        self.spawn()
        if wait:
            self.wait_running()

    def partition(self) -> None:
        """Drop all traffic between the node and the rest (host and nodes); the node keeps running."""
        set_partitioned(self.netns, self.state.veth, cut=True)
        self.state.partitioned = True
        self._lab.save()

    def heal(self) -> None:
        set_partitioned(self.netns, self.state.veth, cut=False)
        self.state.partitioned = False
        self._lab.save()

    def stop_fleetd(self) -> None:
        self.exec(["systemctl", "stop", FLEETD_UNIT])

    def start_fleetd(self) -> None:
        self.exec(["systemctl", "start", FLEETD_UNIT], timeout=120)

    def logs(self, unit: str | None = None, lines: int | None = None) -> str:
        cmd = ["journalctl", "--no-pager", "-q"]
        if unit:
            cmd += ["-u", unit]
        if lines:
            cmd += ["-n", str(lines)]
        return self.exec(cmd, check=False).stdout
