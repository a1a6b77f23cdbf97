"""Host-side helpers: running commands, identifying processes, reading mounts and cgroups.

Nothing here knows about labs; the callers decide what is theirs.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from fleetd.errors import LabError


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30.0,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `cmd`, capturing text output; raise LabError on timeout or (if `check`) failure."""
    try:
        proc = subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=dict(env) if env is not None else None,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{shlex.join(cmd)}: timed out after {timeout:g}s") from exc
    except OSError as exc:
        raise LabError(f"{shlex.join(cmd)}: {exc.strerror or exc}") from exc
    if check and proc.returncode != 0:
        raise LabError(f"{shlex.join(cmd)}: exit {proc.returncode}: {last_line(proc)}")
    return proc


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The last line of a failed command's stderr (or stdout), for one-line error messages."""
    detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
    return detail[-1] if detail else "(no output)"


# --- processes ----------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


@dataclass(frozen=True)
class ProcRef:
    """A process identified by PID *and* start time, so a recycled PID is never mistaken for it."""

    pid: int
    start: int  # clock ticks since boot, field 22 of /proc/PID/stat

    @classmethod
    def of(cls, pid: int) -> "ProcRef | None":
        fields = _stat_fields(pid)
        return None if fields is None else cls(pid, int(fields[19]))

    def alive(self) -> bool:
        """True while the process exists, is this very process, and is not a zombie."""
        fields = _stat_fields(self.pid)
        return fields is not None and int(fields[19]) == self.start and fields[0] not in ("Z", "X")

    def signal(self, sig: int) -> bool:
        """Send `sig` if the process is still this one; return whether it was sent."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def to_json(self) -> list[int]:
        return [self.pid, self.start]

    @classmethod
    def from_json(cls, value: Sequence[int] | None) -> "ProcRef | None":
        return None if value is None else cls(int(value[0]), int(value[1]))


def children(pid: int) -> list[int]:
    """Direct children of `pid` (all its threads)."""
    result: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            result.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return result


def ns_pids(pid: int) -> list[int]:
    """The NSpid line of /proc/PID/status: the PID in each nested pid namespace."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    except OSError:
        pass
    return []


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds passed; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def eventually(predicate, timeout: float = 20.0, what: str = "condition", interval: float = 0.2):
    """For lab tests: poll until `predicate()` is truthy and return that value; fail with an
    AssertionError naming `what` once `timeout` seconds have passed."""
    result = None

    def probe() -> bool:
        nonlocal result
        result = predicate()
        return bool(result)

    if not wait_until(probe, timeout, interval):
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
    return result


# --- mounts -------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    source: str
    super_options: str


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mounts() -> list[Mount]:
    """Mounts of this process's mount namespace, in mount order."""
    result = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        result.append(Mount(_unescape(fields[4]), tail[0], _unescape(tail[1]), tail[2] if len(tail) > 2 else ""))
    return result


def mount_at(path: str | Path) -> Mount | None:
    """The topmost mount whose mount point is exactly `path`, or None."""
    target = str(path)
    found = None
    for m in mounts():
        if m.mount_point == target:
            found = m
    return found


def mounts_under(path: str | Path) -> list[Mount]:
    """Mounts at or below `path`."""
    base = str(path).rstrip("/")
    return [m for m in mounts() if m.mount_point == base or m.mount_point.startswith(base + "/")]


# --- cgroups ------------------------------------------------------------------


def cgroup_roots() -> list[Path]:
    """Hierarchies systemd uses: the cgroup2 mount and a v1 `name=systemd` mount (hybrid hosts)."""
    roots = []
    for m in mounts():
        if m.fstype == "cgroup2" or (m.fstype == "cgroup" and "name=systemd" in m.super_options.split(",")):
            roots.append(Path(m.mount_point))
    return roots


MEMORY_V1_MOUNT = "/sys/fs/cgroup/memory"


def memory_v1_hierarchy() -> Path | None:
    """The cgroup v1 hierarchy of the memory controller, if it is mounted on its own at
    /sys/fs/cgroup/memory (hybrid and legacy hosts); None otherwise (cgroup2-only host, memory
    co-mounted with another controller, or not mounted)."""
    for m in mounts():
        if m.mount_point == MEMORY_V1_MOUNT and m.fstype == "cgroup" and "memory" in m.super_options.split(","):
            return Path(m.mount_point)
    return None


def cgroup_pids(path: Path) -> set[int]:
    """PIDs in the cgroup `path` and all its descendants."""
    pids: set[int] = set()
    if not path.is_dir():
        return pids
    for dirpath, _dirs, _files in os.walk(path):
        try:
            pids.update(int(p) for p in Path(dirpath, "cgroup.procs").read_text().split())
        except OSError:
            continue
    return pids


def kill_cgroup(path: Path) -> int:
    """SIGKILL every process in the cgroup tree at `path`; return how many were signalled."""
    count = 0
    for pid in cgroup_pids(path):
        try:
            os.kill(pid, signal.SIGKILL)
            count += 1
        except ProcessLookupError:
            pass
    return count


def remove_cgroup(path: Path) -> bool:
    """rmdir the (empty) cgroup tree at `path`, deepest first; return whether it is gone."""
    if not path.is_dir():
        return True
    for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda entry: -len(entry[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass
    return not path.exists()
