"""One systemd-nspawn node on an overlay root, for the systemd adapter tests (prefix `sdx`).

Minimal on purpose (the real lab is fleetlab/). Per the lab notes: a tmpfs state directory,
an overlay with lowerdir=/, a fresh machine-id, a minimal target with dbus.socket,
`--register=no --keep-unit`, a private network namespace. The node's units directory is a
directory of the state tmpfs bind-mounted into the node at the same path, so a process on the
host can write unit files that the node's systemd sees under the same name; the node's system
bus is reached from the host at /proc/<init>/root/run/dbus/system_bus_socket.

Teardown runs even after a failed boot: SIGTERM to nspawn, wait, SIGKILL the node's init if it
is still alive, unmount, remove the netns.

The lab modules that use one node take their fixtures from here (only the node's name differs):

    node = node_fixture("hr-fence", "the fence lab tests")   # module-scoped, booted once
    mgr = manager_fixture(disarm_fence=True)                 # a SystemdManager on it per test
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from fleetd.agent.systemd import SystemdManager

REPO = Path(__file__).resolve().parents[2]

NODE_TARGET = """\
[Unit]
Description=sdx test node
Requires=basic.target dbus.socket
After=basic.target dbus.socket
AllowIsolate=yes
"""


def _run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, timeout=timeout, capture_output=True, text=True)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours counts as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


class SdxNode:
    def __init__(self, name: str = "sdx-n1") -> None:
        self.name = name
        suffix = uuid.uuid4().hex[:8]
        # its own namespace: two runs of a module (a full run beside a helper's) must not share
        # (or delete) one
        self.netns = f"{name}-{suffix}"
        self.state = Path(f"/run/{name}-{suffix}")
        self.root = self.state / "root"
        self.units_dir = self.state / "units"
        self.proc: subprocess.Popen | None = None
        self.init_pid: int | None = None
        self._mounted: list[Path] = []
        self._netns_made = False
        self._log = None

    @property
    def bus_address(self) -> str:
        return f"unix:path=/proc/{self.init_pid}/root/run/dbus/system_bus_socket"

    def start(self, timeout: float = 60) -> "SdxNode":
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        self.state.mkdir(mode=0o755)
        _run("mount", "-t", "tmpfs", "-o", "mode=0755,size=512m", f"{self.name}-state",
             str(self.state))
        self._mounted.append(self.state)
        for sub in ("upper", "work", "root", "units"):
            (self.state / sub).mkdir()
        _run("mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir=/,upperdir={self.state}/upper,workdir={self.state}/work", str(self.root))
        self._mounted.append(self.root)
        (self.root / "etc/hostname").write_text(self.name + "\n")
        (self.root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        (self.root / "etc/systemd/system/sdx-node.target").write_text(NODE_TARGET)

        _run("ip", "netns", "add", self.netns)
        self._netns_made = True

        self._log = open(self.state / "nspawn.log", "w")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-D", str(self.root), "--boot", "--register=no", "--keep-unit",
             f"--machine={self.name}", "--console=passive",
             f"--network-namespace-path=/run/netns/{self.netns}",
             f"--bind={self.units_dir}:{self.units_dir}",
             # nspawn mounts a tmpfs on /tmp: a checkout below /tmp must be bound in explicitly
             f"--bind-ro={REPO}",
             "--", "systemd.unit=sdx-node.target"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)

        deadline = time.monotonic() + timeout
        while True:  # the node's init: nspawn's child once it has exec'd systemd
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn for {self.name} exited: {self.log()}")
            pid = self._child_of(self.proc.pid)
            if pid and _comm(pid) == "systemd":
                self.init_pid = pid
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no init process after {timeout}s")
            time.sleep(0.05)
        while True:  # "offline" until its private socket is up, then "starting" until booted
            out = self.run("systemctl", "is-system-running", check=False, timeout=30)
            status = out.stdout.strip()
            if status in ("running", "degraded"):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not boot ({status}): {self.log()}")
            time.sleep(0.1)
        sock = Path(f"/proc/{self.init_pid}/root/run/dbus/system_bus_socket")
        while not sock.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no system bus socket after {timeout}s")
            time.sleep(0.05)

    @staticmethod
    def _child_of(pid: int) -> int | None:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except FileNotFoundError:
            return None
        return int(children[0]) if children else None

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a command inside the node (all its namespaces)."""
        return _run("nsenter", "-t", str(self.init_pid), "-a", *cmd, check=check, timeout=timeout)

    def log(self) -> str:
        try:
            return (self.state / "nspawn.log").read_text()[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        if _alive(self.init_pid):
            os.kill(self.init_pid, signal.SIGKILL)
            for _ in range(100):
                if not _alive(self.init_pid):
                    break
                time.sleep(0.05)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        for mnt in reversed(self._mounted):
            for attempt in range(50):
                if _run("umount", str(mnt), check=False).returncode == 0:
                    break
                time.sleep(0.1)
            else:
                _run("umount", "-l", str(mnt), check=False)
        self._mounted.clear()
        if self.state.exists():
            try:
                self.state.rmdir()
            except OSError:
                pass
        if self._netns_made:
            _run("ip", "netns", "del", self.netns, check=False)
            self._netns_made = False
        propagate = Path("/run/systemd/nspawn/propagate") / self.name
        if propagate.is_dir():
            try:
                propagate.rmdir()
            except OSError:
                pass


def node_fixture(name: str, what: str):
    """A module-scoped fixture `node`: one SdxNode called `name` for the module's tests; `what`
    names them in the failure when root, systemd-nspawn or nsenter is missing."""

    @pytest.fixture(scope="module")
    def node():
        if os.geteuid() != 0 or not shutil.which("systemd-nspawn") or not shutil.which("nsenter"):
            pytest.fail(f"{what} need root, systemd-nspawn and nsenter")
        n = SdxNode(name)
        n.start()
        try:
            yield n
        finally:
            n.stop()

    return node


def manager_fixture(*, disarm_fence: bool = False):
    """A fixture `mgr`: a SystemdManager on the module's `node`, which it leaves clean for the
    next test (every unit it installed unloaded; with disarm_fence, the fence timer removed)."""

    @pytest.fixture
    async def mgr(node):
        m = await SystemdManager.connect(node.units_dir, bus_address=node.bus_address)
        try:
            yield m
        finally:
            try:
                if disarm_fence:
                    await m.disarm_fence()
                await m.unload(m.installed_units())
            finally:
                await m.close()

    return mgr
