"""fleet-run's hardening defaults for real (issue 17): a user namespace (image shown through an
idmapped mount, or through the cached shifted copy where the image's filesystem cannot idmap),
no_new_privs, the capability bounding set and the seccomp filter; --private-users=no and
--privileged opt out. Runs as root on the host (no systemd needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleetd.images import ImageStore
from fleetd.launcher.idrange import userns_base
from fleetd.launcher.spec import DEFAULT_STATE_ROOT
from tests.unit.test_launcher import LAUNCHER, fleet_run, images_dir, launcher_server, name  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="fleet-run needs root")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(images_dir) -> ImageStore:
    """The busybox store of test_launcher's module fixture, as an ImageStore."""
    return ImageStore(images_dir)


def run(store_root: Path, *args: str, wrap: list[str] | None = None) -> subprocess.CompletedProcess:
    """fleet-run ARGS: forked from test_launcher's fork server (fleet_run), or with `wrap` (a
    command that runs it, e.g. in a mount namespace of its own) a cold process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if not wrap:
        return fleet_run(store_root, *args, timeout=120, env=env)
    return subprocess.run([*wrap, *LAUNCHER, "--images-dir", str(store_root), *args],
                          capture_output=True, text=True, timeout=120, env=env)


def status(text: str, key: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in text.splitlines()
                if line.startswith(key + ":"))


PROBE = ("cat /proc/self/uid_map /proc/self/gid_map; id -u; stat -c '%u:%g' /bin/busybox /etc/passwd /dev; "
         "grep -E '^(NoNewPrivs|Seccomp|CapBnd):' /proc/self/status; echo hi > /etc/new && echo wrote")


def test_user_namespace_by_default_with_the_image_idmapped(store, name):
    r = run(store.root, "--name", name, "--image", "busybox", "--keep-state", "--", "sh", "-c", PROBE)
    try:
        assert r.returncode == 0, r.stderr
        base = userns_base(name)
        lines = r.stdout.splitlines()
        assert lines[0].split() == ["0", str(base), "65536"]   # root inside is host uid BASE
        assert lines[1].split() == ["0", str(base), "65536"]
        assert lines[2] == "0"
        assert lines[3:6] == ["0:0", "0:0", "0:0"]             # the image's owners appear right
        assert "wrote" in lines
        new = DEFAULT_STATE_ROOT / name / "upper" / "etc" / "new"
        assert (os.stat(new).st_uid, os.stat(new).st_gid) == (base, base)  # on the host: BASE
        assert not (store.root / "userns").exists()             # idmapped: no copy was made
    finally:
        subprocess.run(["rm", "-rf", str(DEFAULT_STATE_ROOT / name)], check=False)


def test_seccomp_no_new_privs_and_capabilities(store, name):
    script = ("grep -E '^(NoNewPrivs|Seccomp|CapBnd):' /proc/self/status; "
              "mount -t tmpfs x /mnt 2>&1; echo mount=$?; unshare -U true 2>&1; echo unshare=$?; "
              "reboot -f 2>&1; echo reboot=$?; hostname other 2>&1; echo hostname=$?; "
              "chroot / true; echo chroot=$?")
    r = run(store.root, "--name", name, "--image", "busybox", "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert status(out, "NoNewPrivs") == "1" and status(out, "Seccomp") == "2"
    bnd = int(status(out, "CapBnd"), 16)
    assert bnd & (1 << 21) == 0 and bnd & (1 << 22) == 0   # no CAP_SYS_ADMIN, no CAP_SYS_BOOT
    for what in ("mount", "unshare", "reboot", "hostname"):
        assert f"{what}=0" not in out, out
    assert "unshare(0x10000000): Operation not permitted" in out   # the filter, not a capability
    assert "chroot=0" in out                                       # left allowed


def test_opt_outs(store, name):
    r = run(store.root, "--name", name, "--image", "busybox", "--private-users=no", "--",
            "sh", "-c", "cat /proc/self/uid_map; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[:3] == ["0", "0", "4294967295"]
    assert status(r.stdout, "Seccomp") == "2"       # the other defaults stay
    r = run(store.root, "--name", name, "--image", "busybox", "--privileged", "--",
            "sh", "-c", "cat /proc/self/uid_map; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; "
                        "unshare -U true; echo unshare=$?")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[:3] == ["0", "0", "4294967295"]
    assert status(r.stdout, "Seccomp") == "0" and status(r.stdout, "NoNewPrivs") == "0"
    assert "unshare=0" in r.stdout


def test_user_outside_the_range_is_one_line(store, name):
    r = run(store.root, "--name", name, "--image", "busybox", "--user", "70000", "--", "true")
    assert r.returncode == 125
    assert r.stderr.strip() == ('fleet-run: --user "70000": id 70000 is outside the container\'s '
                                "user namespace (0..65535)")


def test_on_a_filesystem_without_idmapped_mounts_a_cached_shifted_copy(store, name, tmp_path):
    """The store seen through an overlay (as in a fleet-lab node, whose root is one): overlayfs
    takes no idmapped mount, so the image is copied once with shifted owners and reused."""
    for sub in ("upper", "work", "merged"):
        (tmp_path / sub).mkdir()
    opts = f"lowerdir={store.root},upperdir={tmp_path}/upper,workdir={tmp_path}/work"
    # a private mount namespace: the overlay is never visible on the host
    wrap = ["unshare", "-m", "--propagation", "private", "sh", "-c",
            f'mount -t overlay overlay -o "{opts}" "{tmp_path}/merged" && exec "$@"', "sh"]
    merged = tmp_path / "merged"
    r1 = run(merged, "--name", name, "--image", "busybox", "--", "sh", "-c", PROBE, wrap=wrap)
    assert r1.returncode == 0, r1.stderr
    lines = r1.stdout.splitlines()
    assert lines[0].split() == ["0", str(userns_base(name)), "65536"]
    assert lines[3:6] == ["0:0", "0:0", "0:0"] and "wrote" in lines
    copies = list((tmp_path / "upper" / "userns").iterdir())
    assert [c.name for c in copies] == [f"{store.get('busybox').digest[7:]}-{userns_base(name)}-65536"]
    busybox = copies[0] / "rootfs" / "bin" / "busybox"
    assert os.stat(busybox).st_uid == userns_base(name)
    inode = os.stat(busybox).st_ino
    r2 = run(merged, "--name", name, "--image", "busybox", "--", "true", wrap=wrap)
    assert r2.returncode == 0, r2.stderr
    assert os.stat(busybox).st_ino == inode            # cached: not copied again
    # a plain directory (not a store image) on such a filesystem: refused in one line
    r3 = run(merged, "--name", name, "--image", f"{merged}/images/{store.get('busybox').digest[7:]}/../..",
             "--", "true", wrap=wrap)
    assert r3.returncode == 125 and "--private-users=no" in r3.stderr
    # the copy goes with the image
    upper_store = ImageStore(tmp_path / "upper")
    (tmp_path / "upper" / "images").mkdir(exist_ok=True)
    subprocess.run(["cp", "-a", f"{store.root}/images/.", f"{tmp_path}/upper/images/"], check=True)
    subprocess.run(["cp", "-a", f"{store.root}/names", f"{tmp_path}/upper/"], check=True)
    upper_store.remove(store.get("busybox").digest)
    assert list((tmp_path / "upper" / "userns").iterdir()) == []


def test_privileged_ports_and_raw_sockets_need_the_hosts_root(store, name):
    """The container's network namespace belongs to the host's user namespace (it is made before
    the container joins its own): root inside holds CAP_NET_BIND_SERVICE and CAP_NET_RAW only
    in its namespace, so a port below 1024 and a raw socket (ping) are refused; with
    --private-users=no both work (Docker's capability set keeps them)."""
    script = ("httpd -p 80 -h /www; echo port80=$?; httpd -p 8080 -h /www; echo port8080=$?; "
              "ping -c1 -W2 127.0.0.1 >/dev/null 2>&1; echo ping=$?")
    r = run(store.root, "--name", name, "--image", "busybox", "--net=none", "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["port80=1", "port8080=0", "ping=1"]
    r = run(store.root, "--name", name, "--image", "busybox", "--net=none", "--private-users=no",
            "--", "sh", "-c", script)
    assert r.stdout.split() == ["port80=0", "port8080=0", "ping=0"]
