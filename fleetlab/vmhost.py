"""The host side of the Vagrant lab: its apt packages, libvirt's daemons, what VMs leave behind.

The packages (Vagrant, vagrant-libvirt, libvirt, QEMU, the box builder's tools: ~200 MB with
Ruby) are installed on demand by `fleet-lab box build` and the VM test rather than by
scripts/bootstrap.sh, which every developer and every CI run goes through: only the Vagrant lab
needs them.

Where systemd is not PID 1 (a container, this project's CI), nothing starts libvirtd and
virtlogd: `LibvirtDaemons` starts them (and a `default` directory storage pool) if no libvirtd
answers, and stops exactly the processes it started, by PID. libvirt leaves its LIBVIRT_*
iptables chains and ip_forward=1 behind (docs/vagrant.md).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from fleetd.errors import LabError

HOST_PACKAGES = (
    "vagrant", "vagrant-libvirt", "libvirt-daemon-system", "libvirt-daemon-driver-qemu", "libvirt-clients",
    "qemu-system-x86", "qemu-utils", "mmdebstrap", "dnsmasq-base", "iptables", "ebtables", "openssh-client",
    "rsync", "fdisk", "grub-pc-bin", "e2fsprogs",
)
LIBVIRT_URI = "qemu:///system"
POOL = "default"
POOL_DIR = "/var/lib/libvirt/images"


def missing_packages(packages=HOST_PACKAGES) -> list[str]:
    missing = []
    for pkg in packages:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if "install ok installed" not in proc.stdout:
            missing.append(pkg)
    return missing


def ensure_packages(packages=HOST_PACKAGES) -> list[str]:
    """Install what is missing of `packages` with apt (idempotent); return what was installed."""
    missing = missing_packages(packages)
    if missing:
        if os.geteuid() != 0:
            raise LabError(f"missing packages (as root: apt-get install {' '.join(missing)})")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
        if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise LabError(f"apt-get install {' '.join(missing)}: {proc.stderr.strip()[-500:]}")
    return missing


def virsh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["virsh", "-c", LIBVIRT_URI, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise LabError(f"virsh {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def libvirt_answers() -> bool:
    try:
        return virsh("version", check=False, timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class LibvirtDaemons:
    """libvirtd and virtlogd: the running ones, or ones started here (stopped again by `stop`)."""

    started: dict[str, int] = field(default_factory=dict)  # daemon -> PID we started
    pool_defined: bool = False
    kvm_mode: tuple[int, int] | None = None  # /dev/kvm's (gid, mode) before `start` changed them

    def _kvm_access(self) -> None:
        """Give /dev/kvm the group and mode Debian's udev rule gives it (kvm, 0660) where no udev
        did: libvirt probes QEMU's capabilities as root (with KVM) but checks /dev/kvm as its
        qemu user, finds the cache outdated on every call and probes again (~4-17 s per call)."""
        kvm = Path("/dev/kvm")
        try:
            import grp

            gid = grp.getgrnam("kvm").gr_gid
            st = kvm.stat()
        except (KeyError, OSError):
            return
        if st.st_gid != gid or st.st_mode & 0o060 != 0o060:
            self.kvm_mode = (st.st_gid, st.st_mode & 0o7777)
            os.chown(kvm, -1, gid)
            os.chmod(kvm, 0o660)

    def start(self) -> "LibvirtDaemons":
        self._kvm_access()
        if not libvirt_answers():
            for daemon in ("virtlogd", "libvirtd"):
                pidfile = Path(f"/run/{daemon}.pid")
                pid = _read_pid(pidfile)
                if pid is not None and _alive(pid):
                    continue
                if shutil.which(daemon) is None and not Path(f"/usr/sbin/{daemon}").exists():
                    raise LabError(f"{daemon}: not installed (apt-get install libvirt-daemon-system)")
                subprocess.run([daemon, "-d"], check=True, capture_output=True)
                deadline = time.monotonic() + 20
                while (pid := _read_pid(pidfile)) is None and time.monotonic() < deadline:
                    time.sleep(0.2)
                if pid is None:
                    raise LabError(f"{daemon} -d: no {pidfile} after 20 s")
                self.started[daemon] = pid
            deadline = time.monotonic() + 30
            while not libvirt_answers():
                if time.monotonic() > deadline:
                    raise LabError(f"libvirtd started but {LIBVIRT_URI} does not answer")
                time.sleep(0.5)
        if virsh("pool-info", POOL, check=False).returncode != 0:
            Path(POOL_DIR).mkdir(parents=True, exist_ok=True)
            virsh("pool-define-as", POOL, "dir", "--target", POOL_DIR)
            virsh("pool-start", POOL)
            virsh("pool-autostart", POOL, check=False)
            self.pool_defined = True
        elif "running" not in virsh("pool-info", POOL).stdout:
            virsh("pool-start", POOL)
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the daemons this object started (by PID), libvirtd first; restore /dev/kvm."""
        for daemon in ("libvirtd", "virtlogd"):
            pid = self.started.pop(daemon, None)
            if pid is None or not _alive(pid):
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.kvm_mode is not None:
            gid, mode = self.kvm_mode
            os.chown("/dev/kvm", -1, gid)
            os.chmod("/dev/kvm", mode)
            self.kvm_mode = None


def leftovers(name_part: str) -> dict[str, list[str]]:
    """libvirt domains, volumes and networks whose name contains `name_part`, and QEMU processes
    whose command line does (what a `vagrant destroy` should have removed)."""
    out: dict[str, list[str]] = {"domains": [], "volumes": [], "networks": [], "processes": []}
    if libvirt_answers():
        out["domains"] = [d for d in virsh("list", "--all", "--name").stdout.split() if name_part in d]
        out["networks"] = [n for n in virsh("net-list", "--all", "--name").stdout.split() if name_part in n]
        vols = virsh("vol-list", POOL, check=False).stdout.splitlines()[2:]
        out["volumes"] = [line.split()[0] for line in vols if line.strip() and name_part in line.split()[0]]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline.split(" ")[0] and name_part in cmdline:
            out["processes"].append(f"{proc.name}: {cmdline[:120]}")
    return out
