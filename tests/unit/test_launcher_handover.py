"""fleet-run --init (tini as PID 1) and --detach (leave PID 1 running and exit), on the host.

The systemd side (a Type=forking unit adopting the container's PID 1 from PIDFile=) is proved
in a lab by tests/test_containers_handover_lab.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from fleetd.launcher.spec import DEFAULT_INIT, DEFAULT_STATE_ROOT
from tests.unit.test_launcher import (LAUNCHER, fleet_run, images_dir, init_pid, kill_container,  # noqa: F401
                                 launcher_server, name, pid_ns, pids_in_ns, start, wait_for)

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="fleet-run needs root"),
              pytest.mark.skipif(not DEFAULT_INIT.exists(), reason=f"{DEFAULT_INIT} missing (apt tini)")]


def proc_states(stat_text: str) -> dict[int, str]:
    """{pid: state letter} from `cat /proc/[0-9]*/stat` output."""
    out = {}
    for line in stat_text.splitlines():
        if ")" in line:
            pid = int(line.split(" ", 1)[0])
            out[pid] = line[line.rindex(")") + 2:].split()[0]
    return out


def test_init_is_pid1_and_the_command_pid2(images_dir, name):
    r = fleet_run(images_dir, "--name", name, "--image", "busybox", "--init", "--",
                  "sh", "-c", "echo $$; cat /proc/1/cmdline; echo; ls -l /dev/init; touch /dev/init 2>&1; true")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "2"
    assert lines[1].split("\0")[:3] == ["/dev/init", "--", "sh"]
    assert lines[2].startswith("-r")            # bind-mounted read-only
    assert "Read-only file system" in lines[3]


@pytest.mark.parametrize("init", [True, False], ids=["init", "without-init"])
def test_init_reaps_orphans(images_dir, name, init):
    # the inner sh exits at once: its background sleep is re-parented to PID 1, which must
    # wait() for it; a command as PID 1 that never reaps (here `cat` of a FIFO, until the
    # listing is done) leaves it a zombie. The listing waits (at most 10 s) until that sleep is
    # gone (reaped: with the init) or a zombie (without).
    ended = "[ ! -e /proc/$pid/stat ]" if init else 'grep -qs ") Z" /proc/$pid/stat'
    script = ('mkfifo /tmp/listed; (sh -c \'sleep 0.2 & echo $! > /tmp/orphan\'; pid=$(cat /tmp/orphan); n=0; '
              f'until {ended} || [ $n -ge 200 ]; do sleep 0.05; n=$((n+1)); done; '
              'cat /proc/[0-9]*/stat 2>/dev/null; : > /tmp/listed) & exec cat /tmp/listed')
    r = fleet_run(images_dir, "--name", name, "--image", "busybox", *(["--init"] if init else []),
                  "--", "sh", "-c", script)
    if init:
        assert r.returncode == 0, r.stderr
        states = proc_states(r.stdout)
        assert states and "Z" not in states.values(), states
    else:  # without --init the same script leaves the zombie: the check above can fail
        assert "Z" in proc_states(r.stdout).values(), r.stdout


def test_init_forwards_sigterm_and_gives_128_plus_n(images_dir, name):
    # `sleep` as PID 2 has the default SIGTERM action: no SIGKILL escalation is needed
    proc = start(images_dir, "--name", name, "--image", "busybox", "--init", "--stop-timeout", "60",
                 "--", "sleep", "1000")
    try:
        pid = wait_for(lambda: init_pid(name), what="init.pid")
        ns = pid_ns(pid)
        wait_for(lambda: len(pids_in_ns(ns)) >= 2, what="the command under the init")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        assert time.monotonic() - t0 < 20
    finally:
        kill_container(proc, name)


def test_init_keeps_the_one_line_errors(images_dir, name):
    for cmd, code, message in [
            ("/bin/nope", 127, 'command "/bin/nope" not found in image busybox'),
            ("nope", 127, 'command "nope" not found in image busybox'),
            ("/etc/passwd", 126, 'command "/etc/passwd" cannot be executed in image busybox: '
                                 "Permission denied")]:
        r = fleet_run(images_dir, "--name", name, "--image", "busybox", "--init", "--", cmd)
        assert (r.returncode, r.stderr) == (code, f"fleet-run: {message}\n")
    r = fleet_run(images_dir, "--name", name, "--image", "busybox", "--init", "--init-path",
                  "/nonexistent/tini", "--", "true")
    assert r.returncode == 125 and "init \"/nonexistent/tini\" not found" in r.stderr


def test_detach_leaves_pid1_running_and_exits(images_dir, name, tmp_path):
    pid = None
    try:
        # (the container keeps the launcher's stdout/stderr: files, not pipes to wait on)
        with open(tmp_path / "out", "w+") as out:
            launcher = subprocess.Popen([*LAUNCHER, "--images-dir", str(images_dir), "--name", name,
                                         "--image", "busybox", "--init", "--detach", "--", "sleep", "1000"],
                                        stdout=out, stderr=out)
            code = launcher.wait(timeout=30)
            out.seek(0)
            assert (code, out.read()) == (0, "")
        pid = init_pid(name)        # what systemd reads as PIDFile=
        assert pid and pid != launcher.pid
        # the container outlived the launcher: PID 1 of its own namespace is the init
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"/dev/init", b"--"]
        assert pid_ns(pid) != pid_ns(os.getpid())
        # while it runs, the name is taken (no launcher holds the lock any more)
        again = fleet_run(images_dir, "--name", name, "--image", "busybox", "--", "true")
        assert again.returncode == 125 and "already in use" in again.stderr
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{pid}/cmdline").exists() or
                 not Path(f"/proc/{pid}/cmdline").read_bytes(), what="the container to die")
        pid = None
        # dead (perhaps a zombie nobody reaps, outside systemd): the name is free again
        again = fleet_run(images_dir, "--name", name, "--image", "busybox", "--", "true")
        assert again.returncode == 0, again.stderr
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", str(DEFAULT_STATE_ROOT / name)], check=False)


def test_detach_failure_leaves_nothing(images_dir, name):
    r = fleet_run(images_dir, "--name", name, "--image", "busybox", "--init", "--detach", "--", "nope")
    assert (r.returncode, r.stderr) == (127, 'fleet-run: command "nope" not found in image busybox\n')
