"""fleet-run for real: namespaces, overlay, mounts, users, signals, exit codes, netns.

Runs as root on the host (no systemd needed). Every container gets an "lnx-" name; the
fixtures check that no process, state directory, mount or netns is left behind.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fleetd.images import ImageStore, build_busybox_image
from fleetd.launcher.spec import DEFAULT_STATE_ROOT
from fleetd.launcher.idrange import userns_base

from _forked_cli import ForkedCli, shared

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="fleet-run needs root")

LAUNCHER = [sys.executable, "-m", "fleetd.launcher"]


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lnx-images")
    bb = build_busybox_image(root / "build")
    store = ImageStore(root / "store")
    store.import_path(bb, "busybox")
    return store.root


@pytest.fixture
def name() -> str:
    """A unique container name; afterwards no state dir or mount of it may be left."""
    n = f"lnx-{uuid.uuid4().hex[:8]}"
    yield n
    state = DEFAULT_STATE_ROOT / n
    left = state.exists()
    if left:
        subprocess.run(["rm", "-rf", str(state)], check=False)
    assert not left, f"state directory {state} left behind"
    with open("/proc/mounts") as f:
        mounts = [line for line in f if n in line]
    assert mounts == [], f"mounts left on the host: {mounts}"


_forked: list[ForkedCli] = []  # the fork server of `python -m fleetd.launcher` (below)


@pytest.fixture(scope="module", autouse=True)
def launcher_server():
    """fleet_run's runs: `python -m fleetd.launcher` forked from one process that imported the
    launcher once (tests/_forked_cli.py; each run still a process of its own: its argv,
    environment, exit code, stdout and stderr), not ~0.12 CPU-s of start-up each. The runs the
    tests signal or watch while they run (`start`) are cold processes. The server is the pytest
    process's (tests/_forked_cli.py `shared`: test_launcher_handover and _hardening share it)."""
    server = shared(("fleetd.launcher.cli",), cli=False)
    _forked.append(server)
    try:
        yield server
    finally:
        _forked.remove(server)


def fleet_run(images_dir: Path, *args: str, timeout: float = 60,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return _forked[0].run(["--images-dir", str(images_dir), *args], cwd=os.getcwd(),
                          env=dict(os.environ) if env is None else env, timeout=timeout, entry="module:fleetd.launcher")


def start(images_dir: Path, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([*LAUNCHER, "--images-dir", str(images_dir), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for(predicate, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def init_pid(name: str) -> int | None:
    try:
        return int((DEFAULT_STATE_ROOT / name / "init.pid").read_text())
    except (OSError, ValueError):
        return None


def pid_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def pids_in_ns(ns: str) -> list[int]:
    """Every host PID whose PID namespace is `ns` (scanning the host's /proc)."""
    return [int(d) for d in os.listdir("/proc") if d.isdigit() and pid_ns(int(d)) == ns]


def kill_container(proc: subprocess.Popen, name: str) -> None:
    """Best-effort teardown for failed tests: SIGKILL the launcher (PDEATHSIG does the rest)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)
    subprocess.run(["rm", "-rf", str(DEFAULT_STATE_ROOT / name)], check=False)


# -- the basics -----------------------------------------------------------------------------


def test_pid1_hostname_fresh_proc(images_dir, name):
    r = fleet_run(images_dir, "--name", name, "--image", "busybox", "--hostname", "lnx-h1", "--",
                  "sh", "-c", "echo $$; hostname; cat /proc/1/cmdline; echo; ps -o pid,comm; echo end")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "1"
    assert lines[1] == "lnx-h1"
    assert lines[2].split("\0") == ["sh", "-c",
                                    "echo $$; hostname; cat /proc/1/cmdline; echo; ps -o pid,comm; echo end", ""]
    assert lines[-1] == "end"
    procs = [line.split() for line in lines[4:-1]]
    assert procs == [["1", "sh"], [procs[1][0], "ps"]], lines   # a fresh /proc
    assert socket.gethostname() != "lnx-h1"


def test_hostname_defaults_to_name_and_mounts(images_dir, name):
    r = fleet_run(images_dir, "--name", name, "--image", "busybox", "--",
                  "sh", "-c", "hostname; cat /proc/mounts; ls /dev; touch /sys/lnx 2>&1; "
                              "echo x > /dev/null && head -c 4 /dev/zero | wc -c")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.splitlines()[0] == name
    mounts = {line.split()[1]: line.split() for line in out.splitlines() if line.count(" ") >= 5}
    assert mounts["/"][2] == "overlay"
    assert mounts["/proc"][2] == "proc"
    assert mounts["/sys"][2] == "sysfs" and mounts["/sys"][3].split(",")[0] == "ro"
    assert mounts["/dev"][2] == "tmpfs" and mounts["/dev/pts"][2] == "devpts"
    assert mounts["/dev/shm"][2] == "tmpfs"
    for dev in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx"):
        assert dev in out.split(), dev
    assert "Read-only file system" in out
    assert out.splitlines()[-1].strip() == "4"


def test_environment_is_cleared_then_set(images_dir, name):
    env = dict(os.environ, LNX_SECRET="host-only", LNX_PASS="passed")
    r = fleet_run(images_dir, "--name", name, "--image", "busybox", "--env", "FOO=bar",
                  "--env", "SPACED=a b=c", "--env", "LNX_PASS", "--", "env", env=env)
    assert r.returncode == 0, r.stderr
    got = dict(line.split("=", 1) for line in r.stdout.splitlines())
    assert got["FOO"] == "bar" and got["SPACED"] == "a b=c" and got["LNX_PASS"] == "passed"
    assert "LNX_SECRET" not in got
    assert got["HOSTNAME"] == name and got["HOME"] == "/root"
    assert got["PATH"].startswith("/usr/local/sbin:")
    assert set(got) == {"FOO", "SPACED", "LNX_PASS", "HOSTNAME", "HOME", "PATH"}


def test_bind_mounts_ro_and_rw(images_dir, name, tmp_path):
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "f").write_text("from host\n")
    single = tmp_path / "single.conf"
    single.write_text("one file\n")
    # the container's root is host uid BASE (its user namespace): binds keep their host owners
    base = userns_base(name)
    for path in (rw, single):
        os.chown(path, base, base)
    r = fleet_run(images_dir, "--name", name, "--image", "busybox",
                  "--bind", f"{ro}:/data:ro", "--bind", f"{rw}:/out",
                  "--bind", f"{single}:/etc/app/single.conf:ro", "--",
                  "sh", "-c", "cat /data/f; echo x > /data/new 2>&1; echo written > /out/g; "
                              "cat /etc/app/single.conf; echo y >> /etc/app/single.conf")
    assert "from host" in r.stdout and "one file" in r.stdout
    assert r.stderr.count("Read-only file system") == 2, r.stderr
    assert not (ro / "new").exists()
    assert (rw / "g").read_text() == "written\n"
    assert single.read_text() == "one file\n"


def test_workdir_and_user(images_dir, name):
    r = fleet_run(images_dir, "--name", name, "--image", "busybox", "--workdir", "/srv/app",
                  "--user", "nobody", "--", "sh", "-c", "pwd; id -u; id -g; echo $HOME; "
                                                        "touch /root/x 2>&1")
    assert r.returncode == 1, r.stderr      # touch's failure is the script's status
    lines = r.stdout.splitlines()
    assert lines[:4] == ["/srv/app", "65534", "65534", "/nonexistent"]
    assert "Permission denied" in lines[4]
    r = fleet_run(images_dir, "--name", name, "--image", "busybox", "--user", "1234:5678",
                  "--", "sh", "-c", "id -u; id -g; id -G; grep Cap[EP] /proc/self/status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == ["1234", "5678", "5678"]
    assert all(line.split()[1] == "0000000000000000" for line in lines[3:])


def test_root_in_container_has_reduced_capabilities(images_dir, name):
    r = fleet_run(images_dir, "--name", name, "--image", "busybox", "--",
                  "sh", "-c", "grep CapBnd /proc/self/status; mount -t tmpfs x /mnt 2>&1; echo $?")
    assert r.returncode == 0, r.stderr
    bnd = int(r.stdout.split()[1], 16)
    assert bnd & (1 << 21) == 0           # no CAP_SYS_ADMIN
    assert bnd & (1 << 0) and bnd & (1 << 6) and bnd & (1 << 7)
    assert r.stdout.splitlines()[-1] != "0"
    r = fleet_run(images_dir, "--name", name, "--image", "busybox", "--privileged", "--",
                  "sh", "-c", "grep CapBnd /proc/self/status")
    assert int(r.stdout.split()[1], 16) & (1 << 21)


# -- exit status and signals ----------------------------------------------------------------


def test_exit_status_propagates(images_dir, name):
    assert fleet_run(images_dir, "--name", name, "--image", "busybox", "--",
                     "sh", "-c", "exit 7").returncode == 7
    assert fleet_run(images_dir, "--name", name, "--image", "busybox", "--", "true").returncode == 0
    # the command run as "-- CMD" or directly after the options
    r = fleet_run(images_dir, "--name", name, "--image", "busybox", "sh", "-c", "exit 3")
    assert r.returncode == 3


def test_killed_by_signal_gives_128_plus_n(images_dir, name):
    proc = start(images_dir, "--name", name, "--image", "busybox", "--", "sleep", "1000")
    try:
        pid = wait_for(lambda: init_pid(name), what="init.pid")
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=15) == 128 + signal.SIGKILL
    finally:
        kill_container(proc, name)


def test_sigterm_to_launcher_ends_every_container_process(images_dir, name):
    proc = start(images_dir, "--name", name, "--image", "busybox", "--stop-timeout", "2", "--",
                 "sh", "-c", "sleep 1000 & sleep 1000 & sleep 1000")
    try:
        pid = wait_for(lambda: init_pid(name), what="init.pid")
        ns = pid_ns(pid)
        assert ns and ns != pid_ns(os.getpid())
        members = wait_for(lambda: len(pids_in_ns(ns)) >= 3 and pids_in_ns(ns),
                           what="three sleeps in the container")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # PID 1 is a plain `sleep` with no handler: the kernel drops the forwarded SIGTERM,
        # so the launcher escalates to SIGKILL after --stop-timeout
        assert proc.wait(timeout=20) == 128 + signal.SIGKILL
        assert 1.5 < time.monotonic() - t0 < 10
        assert pids_in_ns(ns) == []
        assert not any(os.path.exists(f"/proc/{p}") and pid_ns(p) == ns for p in members)
    finally:
        kill_container(proc, name)


def test_sigterm_is_forwarded_to_the_init(images_dir, name):
    proc = start(images_dir, "--name", name, "--image", "busybox", "--stop-timeout", "30", "--",
                 "sh", "-c", "trap 'echo got-term; exit 42' TERM; echo ready; "
                             "sleep 1000 & wait")
    try:
        assert proc.stdout.readline().strip() == "ready"
        wait_for(lambda: init_pid(name), what="init.pid")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 42
        assert time.monotonic() - t0 < 10          # the trap ran, no SIGKILL escalation
        assert "got-term" in proc.stdout.read()
    finally:
        kill_container(proc, name)


def test_sigkill_to_launcher_kills_the_container(images_dir, name):
    proc = start(images_dir, "--name", name, "--image", "busybox", "--",
                 "sh", "-c", "sleep 1000 & sleep 1000")
    try:
        pid = wait_for(lambda: init_pid(name), what="init.pid")
        ns = pid_ns(pid)
        wait_for(lambda: len(pids_in_ns(ns)) >= 2, what="two sleeps")
        proc.kill()
        proc.wait(timeout=10)
        wait_for(lambda: pids_in_ns(ns) == [], timeout=10, what="container processes to die")
        # the stale state dir of a killed launcher does not block the name
        assert (DEFAULT_STATE_ROOT / name).exists()
        r = fleet_run(images_dir, "--name", name, "--image", "busybox", "--", "true")
        assert r.returncode == 0, r.stderr
        assert not (DEFAULT_STATE_ROOT / name).exists()
    finally:
        kill_container(proc, name)


def test_name_in_use_is_refused(images_dir, name):
    proc = start(images_dir, "--name", name, "--image", "busybox", "--", "sleep", "1000")
    try:
        wait_for(lambda: init_pid(name), what="init.pid")
        r = fleet_run(images_dir, "--name", name, "--image", "busybox", "--", "true")
        assert r.returncode == 125
        assert r.stderr == f'fleet-run: container name "{name}" is already in use ' \
                           f"({DEFAULT_STATE_ROOT / name})\n"
    finally:
        kill_container(proc, name)


# -- the overlay ---------------------------------------------------------------------------------


def test_overlay_upper_is_discarded(images_dir, name):
    rootfs = ImageStore(images_dir).get("busybox").rootfs
    r = fleet_run(images_dir, "--name", name, "--image", "busybox", "--",
                  "sh", "-c", "echo x > /etc/lnx-mark && rm /bin/cat && ls /etc/lnx-mark "
                              "&& ls /bin/cat 2>&1; mount | grep -c ' on / type overlay'")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["/etc/lnx-mark", "ls: /bin/cat: No such file or directory",
                                     "1"]
    assert not (rootfs / "etc" / "lnx-mark").exists()
    assert (rootfs / "bin" / "cat").is_symlink()
    r = fleet_run(images_dir, "--name", name, "--image", "busybox", "--",
                  "sh", "-c", "ls /etc/lnx-mark 2>&1; cat /etc/hosts")
    assert "No such file" in r.stdout and "localhost" in r.stdout


def test_keep_state_keeps_the_upper_directory(images_dir, name):
    r = fleet_run(images_dir, "--name", name, "--image", "busybox", "--keep-state", "--",
                  "sh", "-c", "echo kept > /etc/lnx-kept")
    assert r.returncode == 0, r.stderr
    state = DEFAULT_STATE_ROOT / name
    try:
        assert (state / "upper" / "etc" / "lnx-kept").read_text() == "kept\n"
        assert os.listdir(state / "rootfs") == []          # the merged view was never on the host
    finally:
        subprocess.run(["rm", "-rf", str(state)], check=True)


def test_image_given_as_directory(images_dir, name, tmp_path):
    rootfs = build_busybox_image(tmp_path / "rootfs")
    r = fleet_run(images_dir, "--name", name, "--image", str(rootfs), "--", "cat", "/www/index.html")
    assert r.returncode == 0 and "fleet busybox image" in r.stdout


# -- errors -------------------------------------------------------------------------------------


def test_errors_are_one_line_with_docker_exit_codes(images_dir, name, tmp_path):
    def check(args, code, message):
        r = fleet_run(images_dir, "--name", name, *args)
        assert r.returncode == code, (args, r.stderr)
        assert r.stderr == f"fleet-run: {message}\n", args
        assert r.stdout == ""

    check(["--image", "lnx-nope", "--", "true"], 125,
          f'image "lnx-nope" not found in {images_dir}')
    check(["--image", "busybox", "--", "/bin/nope"], 127,
          'command "/bin/nope" not found in image busybox')
    check(["--image", "busybox", "--", "nope"], 127, 'command "nope" not found in image busybox')
    check(["--image", "busybox", "--", "/etc/passwd"], 126,
          'command "/etc/passwd" cannot be executed in image busybox: Permission denied')
    check(["--image", "busybox", "--bind", f"{tmp_path}/missing:/x", "--", "true"], 125,
          f'bind source "{tmp_path}/missing" does not exist')
    (tmp_path / "file").write_text("x")
    check(["--image", "busybox", "--bind", f"{tmp_path}/file:/bin", "--", "true"], 125,
          f'bind mount "{tmp_path}/file:/bin" failed: cannot mount a file on "/bin": '
          "it is a directory in the image")
    check(["--image", "busybox", "--bind", "relative", "--", "true"], 125,
          'invalid --bind "relative" (expected SRC:DST[:ro])')
    check(["--image", "busybox", "--user", "lnx-bob", "--", "true"], 125,
          'user "lnx-bob" not found in /etc/passwd of image busybox')
    check(["--image", "busybox", "--net", "netns:lnx-nonexistent", "--", "true"], 125,
          'network namespace "/run/netns/lnx-nonexistent": No such file or directory')
    check(["--image", "busybox", "--net", "bridge", "--", "true"], 125,
          'invalid --net "bridge" (expected host, none or netns:PATH)')
    check(["--image", "busybox"], 125, "no command given (fleet-run --image IMAGE -- CMD ARGS...)")
    check(["--image", "busybox", "--bogus", "--", "true"], 125, "unrecognized arguments: --bogus")


# -- networking ---------------------------------------------------------------------------------


def test_net_none_has_only_loopback(images_dir, name):
    r = fleet_run(images_dir, "--name", name, "--image", "busybox", "--net", "none", "--",
                  "sh", "-c", "ls /sys/class/net; ip -o link")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "lo" and r.stdout.split("\n")[1].startswith("1: lo:")
    assert len([line for line in r.stdout.splitlines() if ": " in line]) == 1
    assert ",UP" in r.stdout


@pytest.fixture
def netns():
    ns = f"lnx-t1-{uuid.uuid4().hex[:6]}"      # unique: test runs may overlap
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", "10.213.7.1/32", "dev", "lo"], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                    text=True).stdout.split()


def _host_port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_httpd_in_a_network_namespace(images_dir, name, netns):
    port = random.randrange(20000, 40000)
    while not _host_port_free(port):
        port = random.randrange(20000, 40000)
    proc = start(images_dir, "--name", name, "--image", "busybox", "--net", f"netns:{netns}",
                 "--stop-timeout", "1", "--", "httpd", "-f", "-p", str(port), "-h", "/www")
    try:
        def fetch(host: str) -> str:
            # (no "-T": busybox 1.35's wget crashes with it)
            try:
                r = subprocess.run(["ip", "netns", "exec", netns, "busybox", "wget", "-qO-",
                                    f"http://{host}:{port}/"], capture_output=True, text=True,
                                   timeout=5)
            except subprocess.TimeoutExpired:
                return ""
            return r.stdout if r.returncode == 0 else ""

        body = wait_for(lambda: fetch("127.0.0.1"), what="httpd answering in the netns")
        assert "fleet busybox image" in body
        assert "fleet busybox image" in fetch("10.213.7.1")
        assert _host_port_free(port)        # not reachable from the host's namespace
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 128 + signal.SIGKILL
    finally:
        kill_container(proc, name)


# -- cgroups --------------------------------------------------------------------------------------


PIDS_CGROUP_ROOT = Path("/sys/fs/cgroup/pids")


@pytest.mark.skipif(not (PIDS_CGROUP_ROOT / "cgroup.procs").exists(),
                    reason="no cgroup v1 pids hierarchy")
def test_container_stays_in_the_launchers_cgroup(images_dir, name):
    """The container's processes stay in the launcher's cgroup, so its limits apply.

    (The pids controller stands in for a unit's limits: the only memory cgroup here
    belongs to the machinery running this session and is left alone.)"""
    cg = PIDS_CGROUP_ROOT / name
    cg.mkdir()

    def enter_cgroup():
        (cg / "cgroup.procs").write_text(str(os.getpid()))

    try:
        (cg / "pids.max").write_text("20")
        proc = start(images_dir, "--name", name, "--image", "busybox", "--",
                     "sh", "-c", "sleep 1000 & sleep 1000 & sleep 1000",
                     preexec_fn=enter_cgroup)
        try:
            pid = wait_for(lambda: init_pid(name), what="init.pid")
            ns = pid_ns(pid)
            members = wait_for(lambda: len(pids_in_ns(ns)) >= 3 and pids_in_ns(ns),
                               what="container processes")
            procs = {int(p) for p in (cg / "cgroup.procs").read_text().split()}
            assert procs == {proc.pid, *members}
            os.kill(pid, signal.SIGKILL)
            assert proc.wait(timeout=15) == 128 + signal.SIGKILL
        finally:
            kill_container(proc, name)
        wait_for(lambda: (cg / "cgroup.procs").read_text() == "", what="cgroup to empty")

        # launcher + PID 1 + 2 sleeps = 4: the third background sleep cannot be forked
        (cg / "pids.max").write_text("4")
        proc = start(images_dir, "--name", name, "--image", "busybox", "--",
                     "sh", "-c", "for i in 1 2 3 4 5 6; do sleep 1000 & done; wait",
                     preexec_fn=enter_cgroup)
        try:
            assert proc.wait(timeout=30) == 2
            assert "can't fork" in proc.stderr.read()
        finally:
            kill_container(proc, name)
        wait_for(lambda: (cg / "cgroup.procs").read_text() == "", what="cgroup to empty")
    finally:
        cg.rmdir()
