"""Booting and halting one node: its overlay root, the systemd-nspawn process, its init.

A node root is an overlay (lower = the host's /, upper/work on the lab's tmpfs); systemd is
never started on anything else. Each nspawn runs in its own cgroup `fleetlab/<LAB>/<NODE>` so
that nodes do not share a cgroup subtree and `down` can kill whatever is left in it.

Memory limits: systemd-nspawn mounts the host's cgroup v1 controllers read-only in a node (with
or without a cgroup namespace, unless it uses a user namespace), and on a hybrid host the
node's cgroup2 has no controllers (they are bound to v1), so the node's systemd could not apply
`MemoryMax=`. nspawn leaves alone a hierarchy that is already a mount point, though. So on a
host with a v1 memory hierarchy the node also gets its own memory cgroup
(`/sys/fs/cgroup/memory/fleetlab/<LAB>/<NODE>`), and nspawn is given `--tmpfs=/sys/fs/cgroup`
plus a writable bind mount of that cgroup on the node's `/sys/fs/cgroup/memory`: the node sees
its own subtree as the memory hierarchy's root (as nspawn's cgroup namespace shows it) and its
systemd writes `memory.limit_in_bytes` for its units. Nothing above the node's cgroup is visible
or writable from the node.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Mapping, Sequence

from fleetd.errors import LabError

from .config import NODE_TARGET
from .naming import LabNames
from .state import NodeState
from .sysutil import (
    MEMORY_V1_MOUNT,
    ProcRef,
    cgroup_roots,
    children,
    kill_cgroup,
    memory_v1_hierarchy,
    mount_at,
    ns_pids,
    remove_cgroup,
    run,
    wait_until,
)

NSPAWN = "/usr/bin/systemd-nspawn"
IMAGE_STORE = "/var/lib/fleet/images"  # fleetd's images_directory default (fleetd/config.py)
# Runs as the nspawn process before exec: joins the node's cgroups, then becomes systemd-nspawn.
_CGROUP_EXEC = 'for cg in $FLEETLAB_CGROUPS; do echo $$ > "$cg/cgroup.procs" || exit 125; done; exec "$@"'


def mount_tmpfs(names: LabNames) -> None:
    names.tmpfs_dir.mkdir(parents=True, exist_ok=True)
    if mount_at(names.tmpfs_dir) is None:
        run(["mount", "-t", "tmpfs", "-o", "mode=0700", names.tmpfs_source, str(names.tmpfs_dir)])


def mount_overlay(node: NodeState) -> None:
    for path in (node.upper, node.work, node.root):
        Path(path).mkdir(parents=True, exist_ok=True)
    if mount_at(node.root) is None:
        opts = f"lowerdir=/,upperdir={node.upper},workdir={node.work}"
        run(["mount", "-t", "overlay", "overlay", "-o", opts, node.root])


def assert_overlay_root(names: LabNames, node: NodeState) -> None:
    """Refuse to boot unless the node root is the lab's own overlay mount (never the host's /)."""
    root = Path(node.root)
    mount = mount_at(root)
    if root.resolve() == Path("/") or not str(root).startswith(str(names.tmpfs_dir) + "/"):
        raise LabError(f"node {node.name}: root {root} is not inside the lab's tmpfs; refusing to boot")
    if mount is None or mount.fstype != "overlay" or f"upperdir={node.upper}" not in mount.super_options.split(","):
        raise LabError(f"node {node.name}: {root} is not the lab's overlay mount; refusing to boot")


def _node_path(root: Path, rel: str) -> Path:
    """`rel` inside the node root, its directory created; an existing symlink there is removed.

    Refuses a directory that resolves outside the root: an absolute symlink in the host's tree
    would otherwise lead a write onto the host itself.
    """
    path = root / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.parent.resolve().is_relative_to(root):
        raise LabError(f"{rel}: its directory leads out of the node root {root}; not writing it")
    if path.is_symlink():
        path.unlink()
    return path


def write_files(root: Path, files: Mapping[str, str], links: Mapping[str, str]) -> None:
    """Write `files` (path in node → text) and symlinks (path in node → target) into `root`."""
    for rel, text in files.items():
        _node_path(root, rel).write_text(text)
    for rel, target in links.items():
        path = _node_path(root, rel)
        if path.exists():
            path.unlink()
        path.symlink_to(target)


def lab_hierarchies() -> list[Path]:
    """Cgroup hierarchies a lab places its nodes in: the ones systemd uses (`cgroup_roots`) and the
    v1 memory hierarchy if the host has one (see the module's doc)."""
    memory = memory_v1_hierarchy()
    return cgroup_roots() + ([memory] if memory is not None else [])


def lab_cgroups(names: LabNames) -> list[Path]:
    """The lab's own cgroup `fleetlab/<LAB>` in each hierarchy of `lab_hierarchies`."""
    return [root / names.cgroup_rel for root in lab_hierarchies()]


def node_cgroups(names: LabNames, node: str) -> list[Path]:
    return [cg / node for cg in lab_cgroups(names)]


def memory_mount_args(names: LabNames, node: str) -> list[str]:
    """nspawn options that give the node its own memory cgroup as a writable memory hierarchy;
    none on a host without a v1 memory hierarchy."""
    memory = memory_v1_hierarchy()
    if memory is None:
        return []
    return ["--tmpfs=/sys/fs/cgroup", f"--bind={memory / names.cgroup_rel / node}:{MEMORY_V1_MOUNT}"]


def image_store_args(names: LabNames, node: str) -> list[str]:
    """The node's image store on the lab's tmpfs itself, not on the node's overlay root: as on a
    real machine (ext4, xfs ...), fleet-run can then show an image in a container's user
    namespace through an idmapped mount, which overlayfs does not take (it would copy the image
    per container instead, see fleetd/launcher/userns.py). Kept across node restarts."""
    store = names.node_dir(node) / "images"
    store.mkdir(mode=0o700, parents=True, exist_ok=True)
    return [f"--bind={store}:{IMAGE_STORE}"]


def spawn(names: LabNames, node: NodeState, read_only_binds: Sequence[str] = ()) -> subprocess.Popen:
    """Start systemd-nspawn for `node` (detached, logging to the lab dir); return its process.

    `read_only_binds` are host paths shown at the same path inside the node: the checkout must
    be one, since nspawn mounts a fresh tmpfs on /tmp (a checkout below /tmp would vanish).
    """
    assert_overlay_root(names, node)
    cgroups = node_cgroups(names, node.name)
    for cg in cgroups:
        kill_cgroup(cg)
        remove_cgroup(cg)
        cg.mkdir(parents=True, exist_ok=True)
    cmd = [
        NSPAWN,
        f"--directory={node.root}",
        f"--machine={node.name}",
        "--boot",
        "--register=no",
        "--keep-unit",
        "--console=passive",
        "--link-journal=no",
        f"--network-namespace-path=/run/netns/{node.netns}",
        *memory_mount_args(names, node.name),
        *image_store_args(names, node.name),
        *(f"--bind-ro={path}" for path in read_only_binds),
        "--",
        f"systemd.unit={NODE_TARGET}",
    ]
    env = dict(os.environ, FLEETLAB_CGROUPS=" ".join(str(cg) for cg in cgroups))
    with open(names.log_file(node.name), "ab") as log:
        log.write(f"--- fleet-lab: booting {node.name} at {time.strftime('%F %T')}\n".encode())
        log.flush()
        return subprocess.Popen(
            ["/bin/sh", "-c", _CGROUP_EXEC, "fleetlab-spawn", *cmd],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def find_init(nspawn: ProcRef, timeout: float = 10.0) -> ProcRef:
    """The node's init: the child of nspawn that is PID 1 of its own pid namespace."""
    found: list[ProcRef] = []

    def look() -> bool:
        if not nspawn.alive():
            raise LabError(f"systemd-nspawn (pid {nspawn.pid}) exited before the node's init started")
        for pid in children(nspawn.pid):
            pids = ns_pids(pid)
            ref = ProcRef.of(pid)
            if len(pids) >= 2 and pids[-1] == 1 and ref is not None:
                found.append(ref)
                return True
        return False

    if not wait_until(look, timeout, interval=0.02):
        raise LabError(f"systemd-nspawn (pid {nspawn.pid}): no container init after {timeout:g}s")
    return found[0]


def nsenter(init: ProcRef, cmd: list[str]) -> list[str]:
    return ["nsenter", "-t", str(init.pid), "-a", *cmd]


def system_state(init: ProcRef | None, wait: float = 0.0) -> str:
    """`systemctl is-system-running` inside the node, or "offline" if its init is gone.

    With `wait`, block up to that many seconds for the boot to finish (`--wait`).
    """
    if init is None or not init.alive():
        return "offline"
    cmd = ["systemctl", "is-system-running"] + (["--wait"] if wait else [])
    try:
        proc = run(nsenter(init, cmd), check=False, timeout=wait or 10)
    except LabError:  # timed out: still booting (with `wait`), or the node's systemd does not answer
        return "starting" if wait else "unresponsive"
    return proc.stdout.strip() or "unknown"


def _systemctl(init: ProcRef, args: list[str]) -> list[list[str]] | None:
    """Fields of each output line of `systemctl ARGS --no-legend` inside the node; None if the
    node's systemd did not answer in time."""
    try:
        proc = run(nsenter(init, ["systemctl", *args, "--no-legend"]), check=False, timeout=10)
    except LabError:
        return None
    return [line.split() for line in proc.stdout.splitlines() if line.strip()]


def booted(init: ProcRef, tolerated: frozenset[str], wait: float = 0.0) -> tuple[bool, str]:
    """Whether the node finished booting, and its `is-system-running` state.

    A node is booted when its systemd reports `running`. Units in `tolerated` (fleetd, developed
    apart from the lab) may not hold it back: it is also booted when they alone have failed
    (`degraded`) or alone still have jobs queued (`starting`) while the node target is active.
    `wait` is passed to `system_state`.
    """
    state = system_state(init, wait)
    if state == "running":
        return True, state
    if state == "degraded":
        listing = _systemctl(init, ["list-units", "--failed", "--plain"])
        if listing is None:
            return False, state
        failed = {fields[0] for fields in listing}
        if failed <= tolerated:
            return True, state
        raise LabError(f"boot degraded, failed units: {', '.join(sorted(failed))}")
    if state == "starting" and tolerated:
        listing = _systemctl(init, ["list-jobs"])
        jobs = {fields[1] for fields in listing or [] if len(fields) > 1}
        if listing is not None and jobs <= tolerated and _systemctl(init, ["is-active", NODE_TARGET]) == [["active"]]:
            return True, state
    return False, state


def wait_running(node: NodeState, timeout: float, tolerate: frozenset[str] = frozenset()) -> str:
    """Wait until the node has booted (see `booted`); return its system state."""
    init = node.init
    if init is None:
        raise LabError(f"node {node.name}: not booted")
    deadline = time.monotonic() + timeout
    state = "unknown"
    while time.monotonic() < deadline:
        if not init.alive():
            raise LabError(f"node {node.name}: init (pid {init.pid}) died during boot")
        try:
            # blocks until the boot finished (checking tolerated units every 2 s); fails fast while
            # the node's bus is not up yet
            done, state = booted(init, tolerate, wait=max(0.1, min(2.0, deadline - time.monotonic())))
        except LabError as exc:
            raise LabError(f"node {node.name}: {exc}") from None
        if done:
            return state
        time.sleep(0.1)
    raise LabError(f"node {node.name}: systemd still {state!r} after {timeout:g}s")


def halt(names: LabNames, node: NodeState, timeout: float) -> None:
    """Stop a node: SIGTERM nspawn (clean halt) for up to `timeout`, then crash it (see `crash`)."""
    if node.nspawn is not None and node.nspawn.signal(signal.SIGTERM):
        wait_until(lambda: not node.nspawn.alive(), timeout, interval=0.05)
    crash(names, node)


def crash(names: LabNames, node: NodeState, timeout: float = 10.0) -> None:
    """Hard-kill a node: SIGKILL its init (which kills its whole pid namespace) and any leftover
    in its cgroups; wait until nspawn is gone too."""
    if node.init is not None:
        node.init.signal(signal.SIGKILL)
    for cg in node_cgroups(names, node.name):
        kill_cgroup(cg)
    procs = [p for p in (node.init, node.nspawn) if p is not None]
    if not wait_until(lambda: not any(p.alive() for p in procs), timeout, interval=0.02):
        if node.nspawn is not None:
            node.nspawn.signal(signal.SIGKILL)
        if not wait_until(lambda: not any(p.alive() for p in procs), 5.0):
            raise LabError(f"node {node.name}: processes {[p.pid for p in procs if p.alive()]} survive SIGKILL")
    for cg in node_cgroups(names, node.name):
        remove_cgroup(cg)
    node.init = None
    node.nspawn = None
