"""fleet-run units supervised by systemd itself, in a real 1-node lab.

fleet-run builds the container, hands its PID 1 (tini on /dev/init) to the node's systemd with
MAINPID= and exits: no Python process stays per container. Checked here against the node's
real systemd: the main PID, what the unit's cgroup holds, zombie reaping, exit status 128+n
of a command killed by a signal, Restart=, and stop leaving nothing behind.
"""

from __future__ import annotations

import re

import pytest

from fleetd.container.render import container_name
from fleetd.images import build_busybox_image
from fleetlab.sysutil import eventually

pytest_plugins = ["fleetlab.pytest_plugin"]
pytestmark = pytest.mark.lab(nodes=1, wait_fleetd=True)


@pytest.fixture(scope="module")
def busybox(lab, tmp_path_factory):
    root = build_busybox_image(tmp_path_factory.mktemp("busybox") / "rootfs")
    lab.fleetctl("image", "import", str(root), "--name", "busybox", "--machine", lab.node(1).machine_id,
                 timeout=120)
    return "busybox"


def show(node, unit: str, prop: str) -> str:
    return node.exec(["systemctl", "show", "-p", prop, "--value", unit], check=False).stdout.strip()


def cgroup_pids(node, unit: str) -> list[int]:
    """PIDs in the unit's cgroup, as the node sees them (its systemd's own view)."""
    out = node.exec(["systemctl", "show", "-p", "ControlGroup", "--value", unit]).stdout.strip()
    text = node.exec(["sh", "-c", f"cat /sys/fs/cgroup/unified{out}/cgroup.procs "
                                  f"/sys/fs/cgroup/systemd{out}/cgroup.procs 2>/dev/null"], check=False).stdout
    return sorted({int(p) for p in text.split()})


def cmdline(node, pid: int) -> list[str]:
    out = node.exec(["cat", f"/proc/{pid}/cmdline"], check=False).stdout
    return out.split("\0")[:-1]


def proc_state(node, pid: int) -> str:
    out = node.exec(["cat", f"/proc/{pid}/stat"], check=False).stdout
    return out[out.rindex(")") + 2:].split()[0] if ")" in out else ""


def run(lab, name: str, *args: str) -> None:
    lab.fleetctl("run", name, "--image", "busybox", *args, timeout=120)


def test_systemd_supervises_the_container_and_no_python_stays(lab, busybox):
    node, unit = lab.node(1), "hand.service"
    # a command that leaves orphans behind: each becomes a child of PID 1 (tini), which reaps it
    run(lab, "hand", "--stop-timeout", "3", "--", "sh", "-c",
        'while true; do sh -c "sleep 0.05 &"; sleep 0.2; done')
    try:
        assert show(node, unit, "ActiveState") == "active"
        assert show(node, unit, "Type") == "forking"
        main = int(show(node, unit, "MainPID"))
        assert cmdline(node, main)[:3] == ["/dev/init", "--", "sh"]
        pids = eventually(lambda: len(cgroup_pids(node, unit)) >= 2 and cgroup_pids(node, unit), 10,
                          "the container's processes in the unit's cgroup")
        assert main in pids
        for pid in pids:
            argv = cmdline(node, pid)
            assert not any("python" in word or "fleet-run" in word for word in argv), (pid, argv)
        # orphans come and go every 0.2 s: none of them stays a zombie
        for _ in range(3):
            states = {pid: proc_state(node, pid) for pid in cgroup_pids(node, unit)}
            zombies = [pid for pid, st in states.items() if st == "Z"]
            if not zombies:
                break
            # a zombie may be caught between its exit and tini's wait(): it must be gone soon
            eventually(lambda: all(proc_state(node, z) != "Z" for z in zombies), 5, "zombies reaped")
        state_dir = f"/run/fleet/containers/{container_name(unit)}"
        assert node.exec(["test", "-d", state_dir], check=False).returncode == 0

        lab.fleetctl("stop", unit)
        eventually(lambda: show(node, unit, "ActiveState") == "inactive", 20, "the unit to stop")
        journal = node.exec(["journalctl", "-u", unit, "--no-pager"]).stdout
        assert "Deactivated successfully" in journal and "Failed with result" not in journal, journal
        assert cgroup_pids(node, unit) == []
        assert node.exec(["test", "-e", state_dir], check=False).returncode != 0
        assert node.exec(["sh", "-c", "grep -c 'fleet/containers' /proc/mounts"], check=False).stdout.strip() == "0"
    finally:
        lab.fleetctl("destroy", unit, check=False)


def test_command_killed_by_a_signal_exits_128_plus_n(lab, busybox):
    node, unit = lab.node(1), "sig.service"
    run(lab, "sig", "--", "sleep", "1000")
    try:
        main = int(show(node, unit, "MainPID"))
        ps = node.exec(["ps", "-eo", "pid,ppid,args"]).stdout
        child = next(int(line.split()[0]) for line in ps.splitlines()[1:]
                     if line.split()[1] == str(main) and "sleep 1000" in line)
        # SIGUSR1 (10): not a clean end (those are 137, 143), so the failed unit keeps its status
        node.exec(["kill", "-USR1", str(child)])
        eventually(lambda: show(node, unit, "ActiveState") == "failed", 20, "the unit to fail")
        assert show(node, unit, "ExecMainStatus") == "138"   # tini exits 128+10
        assert show(node, unit, "ExecMainCode") == "1"       # CLD_EXITED: systemd reaped tini itself
        assert show(node, unit, "ExecMainPID") == str(main)
    finally:
        lab.fleetctl("destroy", unit, check=False)


def test_restart_policy_restarts_the_container(lab, busybox):
    node, unit = lab.node(1), "again.service"
    run(lab, "again", "--restart", "on-failure", "--", "sh", "-c", "sleep 1; exit 3")
    try:
        eventually(lambda: int(show(node, unit, "NRestarts") or 0) >= 2, 30, "two restarts")
        assert show(node, unit, "ExecMainStatus") in ("3", "0")  # 0 while a new one runs
        main = int(show(node, unit, "MainPID") or 0)
        if main:
            assert re.match(r"/dev/init", (cmdline(node, main) or [""])[0])
    finally:
        lab.fleetctl("destroy", unit, check=False)
    eventually(lambda: node.exec(["sh", "-c", "ls /run/fleet/containers/ 2>/dev/null"],
                                 check=False).stdout.split().count("again") == 0, 20, "state dir removed")


def test_fleetd_restart_leaves_the_container_alone(lab, busybox):
    """fleetd is not the container's parent: a fleetd SIGKILL leaves PID 1 and the unit as they were."""
    node, unit = lab.node(1), "keep.service"
    run(lab, "keep", "--", "sleep", "1000")
    try:
        main = show(node, unit, "MainPID")
        node.exec(["systemctl", "kill", "-s", "KILL", "fleetd.service"])
        eventually(lambda: show(node, "fleetd.service", "ActiveState") == "active" and
                   show(node, "fleetd.service", "NRestarts") != "0", 30, "fleetd to come back")
        lab.wait_fleetd()
        eventually(lambda: [r for r in lab.fleetctl("list-units", "--no-legend").stdout.splitlines()
                            if r.startswith(unit) and "active" in r.split()], 20, "the unit listed active")
        assert show(node, unit, "MainPID") == main
        assert show(node, unit, "ActiveState") == "active"
    finally:
        lab.fleetctl("destroy", unit, check=False)
