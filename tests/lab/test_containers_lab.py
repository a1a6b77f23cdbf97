"""Containers on a real 3-node lab: `fleetctl run`/`run-pod`, both runtimes, images between nodes.

Boots a fleetlab (systemd-nspawn nodes, etcd, fleetd). The busybox image is imported on node 1
only (`fleetctl image import` of a directory from the host); every other node that must run a
busybox container fetches it from node 1 before loading the unit. HTTP is checked from the
host (python urllib) against each node's own address; process lists, unit files and cgroups
are inspected inside the nodes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fleetd.images import build_busybox_image
from fleetlab.sysutil import memory_v1_hierarchy

from fleetlab.sysutil import eventually

pytest_plugins = ["fleetlab.pytest_plugin"]
pytestmark = pytest.mark.lab(nodes=3, wait_fleetd=True)

PAGE = b"fleet busybox image"


def http_get(ip: str, port: int, path: str = "/", timeout: float = 3.0) -> bytes | None:
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}{path}", timeout=timeout) as response:
            return response.read()
    except (urllib.error.URLError, OSError):
        return None


def rows(lab, *args: str) -> list[list[str]]:
    out = lab.fleetctl(*args, "--no-legend", "--full").stdout
    return [line.split() for line in out.splitlines() if line.strip()]


def placement(lab, name: str):
    """(node, state) of a unit from list-units."""
    for unit, machine, active, *_ in rows(lab, "list-units"):
        if unit == name:
            ip = machine.split("/")[1]
            return next(n for n in lab.nodes if n.ip == ip), active
    return None, None


def processes(node, pattern: str) -> list[str]:
    out = node.exec(["ps", "-eo", "pid,args"], check=False).stdout
    return [line.strip() for line in out.splitlines()[1:] if re.search(pattern, line) and "ps -eo" not in line]


def show(node, unit: str, prop: str) -> str:
    return node.exec(["systemctl", "show", "-p", prop, "--value", unit], check=False).stdout.strip()


def api(lab, node=None) -> list[str]:
    """fleetctl against a node's fleet API (TCP, lab-only), e.g. for `status`."""
    node = node or lab.node(1)
    return lab.fleetctl_api_args(node.name)  # https + the lab's operator certificate


@pytest.fixture(scope="module")
def busybox(lab, tmp_path_factory):
    """busybox imported on node 1 only, through `fleetctl image import` of a directory."""
    root = build_busybox_image(tmp_path_factory.mktemp("busybox") / "rootfs")
    n1 = lab.node(1)
    out = lab.fleetctl("image", "import", str(root), "--name", "busybox", "--machine", n1.machine_id, timeout=120)
    digest = re.search(r"sha256:[0-9a-f]{64}", out.stdout).group(0)
    assert f"on {n1.machine_id[:8]} as busybox: {digest}" in out.stdout
    listing = eventually(lambda: [r for r in rows(lab, "images") if "busybox" in r], 20, "node 1 to publish busybox")
    assert [r[0].split("/")[0] for r in listing] == [n1.machine_id]  # nobody else has it yet
    return digest


def destroy(lab, *names: str) -> None:
    lab.fleetctl("destroy", *names, check=False)


@pytest.mark.parametrize("runtime,port", [("launcher", 18181), ("nspawn", 18182)])
def test_httpd_containers_answer_on_each_nodes_address_and_stop_clean(lab, busybox, runtime, port):
    base = f"web{runtime[0]}"
    names = [f"{base}@{i}.service" for i in (1, 2, 3)]
    try:
        started = lab.fleetctl("run", base, "--image", "busybox", "--runtime", runtime, "--port", str(port),
                               "--count", "3", "--stop-timeout", "3", "--env", "GREETING=hello world",
                               "--", "httpd", "-f", "-p", str(port), "-h", "/www", timeout=180)
        assert started.stdout.count(" launched on ") == 3, started.stdout
        placed = {name: placement(lab, name) for name in names}
        assert {state for _, state in placed.values()} == {"active"}
        nodes = [node for node, _ in placed.values()]
        assert len({n.name for n in nodes}) == 3  # --port with --count: Conflicts spread them
        for node in lab.nodes:  # two of the three nodes fetched busybox from node 1
            assert http_get(node.ip, port) and PAGE in http_get(node.ip, port), node.name
            assert node.exec(["ls", f"/var/lib/fleet/images/images/{busybox[7:]}"], check=False).returncode == 0

        name, (node, _) = names[0], placed[names[0]]
        on_disk = node.exec(["cat", f"/run/fleet/units/{name}"]).stdout
        assert on_disk.startswith(f"# fleet-hash: ")
        assert lab.fleetctl("cat", "--rendered", name).stdout == on_disk  # rendered on the client alike
        assert lab.fleetctl(*api(lab), "cat", "--rendered", name).stdout == on_disk  # API driver too
        assert "[X-Container]" in lab.fleetctl("cat", name).stdout  # the stored unit stays declarative
        argv = show(node, name, "ExecStart")
        if runtime == "launcher":
            assert f"--image={busybox}" in argv and "fleet-run" in argv
            assert "--env=GREETING=hello world" in argv
        else:
            assert "systemd-nspawn" in argv and "--keep-unit" in argv and "--register=no" in argv
            assert f"--overlay=/var/lib/fleet/images/images/{busybox[7:]}/rootfs:" in argv
        assert show(node, name, "NoNewPrivileges") == "yes"
        assert show(node, name, "KillMode") == "mixed"

        lab.fleetctl("stop", *names)
        pattern = rf"httpd -f -p {port}|fleet-run --name={base}-|systemd-nspawn .*--machine={base}-"
        for node in nodes:
            eventually(lambda: not processes(node, pattern), 20, f"no container process of {base} on {node.name}")
            assert show(node, names[nodes.index(node)], "ActiveState") == "inactive"
            assert node.exec(["sh", "-c", f"ls -d /run/fleet/nspawn/{base}-* /run/fleet/containers/{base}-* "
                                          "2>/dev/null"], check=False).stdout == ""
            assert http_get(node.ip, port, timeout=1) is None
    finally:
        destroy(lab, *names)


def test_global_container_runs_on_every_node(lab, busybox):
    try:
        out = lab.fleetctl("run", "everywhere", "--image", "busybox", "--global", "--", "sleep", "100000").stdout
        assert "Triggered global unit everywhere.service start" in out
        for node in lab.nodes:
            eventually(lambda: show(node, "everywhere.service", "ActiveState") == "active", 60, f"the unit on {node.name}")
            # active means the launcher runs; its container's command follows a moment later
            eventually(lambda: processes(node, r"\d+ sleep 100000$"), 10, f"the container's command on {node.name}")
        holders = {r[0].split("/")[0] for r in rows(lab, *api(lab), "images") if "busybox" in r}
        assert holders == {n.machine_id for n in lab.nodes}  # listed by every machine's image server
    finally:
        destroy(lab, "everywhere.service")


def test_memory_limit_reaches_systemd(lab, busybox):
    name = "mem.service"
    try:
        lab.fleetctl("run", "mem", "--image", "busybox", "--memory", "48M", "--cpus", "0.5", "--tasks", "20",
                     "--", "sleep", "1000", timeout=120)
        node, state = placement(lab, name)
        assert state == "active"
        assert show(node, name, "MemoryMax") == str(48 << 20)
        assert show(node, name, "TasksMax") == "20"
        assert show(node, name, "CPUQuotaPerSecUSec") == "500ms"
        text = node.exec(["cat", f"/run/fleet/units/{name}"]).stdout
        assert f"MemoryMax={48 << 20}" in text
    finally:
        destroy(lab, name)


def test_memory_limit_in_the_cgroup(lab, busybox):
    """The node's systemd puts the container unit's MemoryMax= into its memory cgroup (cgroup v1
    memory.limit_in_bytes on a hybrid host: fleetlab hands each node its own writable memory
    hierarchy; memory.max with cgroup2)."""
    name = "memcg.service"
    try:
        lab.fleetctl("run", "memcg", "--image", "busybox", "--memory", "48M", "--", "sleep", "1000", timeout=120)
        node, _ = placement(lab, name)
        cgroup = show(node, name, "ControlGroup")
        paths = [f"/sys/fs/cgroup/memory{cgroup}/memory.limit_in_bytes", f"/sys/fs/cgroup/unified{cgroup}/memory.max",
                 f"/sys/fs/cgroup{cgroup}/memory.max"]
        found = [p.stdout.strip() for p in (node.exec(["cat", path], check=False) for path in paths)
                 if p.returncode == 0]
        if not found and memory_v1_hierarchy() is None:
            controllers = node.exec(["sh", "-c", "cat /sys/fs/cgroup/unified/cgroup.controllers "
                                                 "/sys/fs/cgroup/cgroup.controllers 2>/dev/null"],
                                    check=False).stdout.split()
            if "memory" not in controllers:
                pytest.skip("neither a cgroup v1 memory hierarchy on the host (fleetlab hands that one to its "
                            f"nodes) nor a memory controller in the node's cgroup2 (controllers: {controllers}); "
                            "MemoryMax= reaching systemd is checked by test_memory_limit_reaches_systemd")
        assert found == [str(48 << 20)], f"{name}: memory limit files {paths}: {found}"
    finally:
        destroy(lab, name)


def _oci_archive(path: Path, rootfs: Path, port: int) -> None:
    """An OCI image layout (tarball): busybox in layer 1 (plus /etc/junk), layer 2 deletes
    /etc/junk with a whiteout and adds /www/two.html; Cmd runs httpd on `port`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(rootfs, arcname=".")
        junk = tarfile.TarInfo("etc/junk")
        junk.size = 5
        tar.addfile(junk, io.BytesIO(b"junk\n"))
    layer1 = gzip.compress(buf.getvalue(), mtime=0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("etc/.wh.junk"), io.BytesIO(b""))
        page = b"<html>layer two</html>\n"
        two = tarfile.TarInfo("www/two.html")
        two.size, two.mode = len(page), 0o644
        tar.addfile(two, io.BytesIO(page))
    layer2 = buf.getvalue()
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": f"sha256:{digest}", "size": len(data)}

    config = blob(json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["httpd", "-f", "-p", str(port), "-h", "/www"], "Env": ["PATH=/bin"], "WorkingDir": "/www"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(gzip.decompress(layer1)).hexdigest()}",
                                                  f"sha256:{hashlib.sha256(layer2).hexdigest()}"]},
    }).encode())
    manifest = blob(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blob(layer1)},
                   {"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(layer2)}],
    }).encode())
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                                **manifest, "platform": {"architecture": "amd64", "os": "linux"}}]}
    with tarfile.open(path, "w") as tar:
        for name, data in [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                           ("index.json", json.dumps(index).encode())] + \
                          [(f"blobs/sha256/{d}", data) for d, data in blobs.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_oci_archive_imports_and_runs_on_another_node(lab, busybox, tmp_path):
    n2, n3 = lab.node(2), lab.node(3)
    port = 18183
    archive = tmp_path / "web-oci.tar"
    _oci_archive(archive, build_busybox_image(tmp_path / "rootfs"), port)
    out = lab.fleetctl("image", "import", str(archive), "--name", "web-oci:1", "--machine", n2.machine_id,
                       timeout=120).stdout
    digest = re.search(r"sha256:[0-9a-f]{64}", out).group(0)
    assert digest != busybox
    try:
        # no command: the image's Cmd; placed on node 3, which fetches the image from node 2
        lab.fleetctl("run", "oci", "--image", "web-oci:1", "--metadata", f"hostname={n3.name}", timeout=120)
        node, state = placement(lab, "oci.service")
        assert (node.name, state) == (n3.name, "active")
        assert eventually(lambda: http_get(n3.ip, port, "/two.html"), 10, "layer two's page") == b"<html>layer two</html>\n"
        assert PAGE in http_get(n3.ip, port, "/index.html")
        for node in (n2, n3):  # the whiteout removed layer 1's file; same content, same digest on both
            rootfs = f"/var/lib/fleet/images/images/{digest[7:]}/rootfs"
            assert node.exec(["test", "-e", f"{rootfs}/etc/junk"], check=False).returncode == 1
            assert node.exec(["test", "-f", f"{rootfs}/etc/passwd"], check=False).returncode == 0
        assert "--workdir=/www" in show(n3, "oci.service", "ExecStart")  # the image's config came along
    finally:
        destroy(lab, "oci.service")


def test_pod_helpers_follow_the_main_container_and_stop_with_it(lab, busybox):
    port = 18184
    names = ["shop-web.service", "shop-tick.service", "shop-idle.service"]
    try:
        out = lab.fleetctl(
            "run-pod", "shop",
            "-c", f"web --image busybox --port {port} --stop-timeout 2 -- httpd -f -p {port} -h /www",
            "-c", "tick --image busybox --runtime nspawn -- sh -c 'while true; do echo tick; sleep 1; done'",
            "-c", "idle --image busybox -- sleep 100000", timeout=180).stdout
        assert out.count(" launched on ") == 3, out
        nodes = {name: placement(lab, name)[0] for name in names}
        main = nodes["shop-web.service"]
        assert {n.name for n in nodes.values()} == {main.name}
        assert PAGE in http_get(main.ip, port)
        helper = lab.fleetctl("cat", "shop-tick.service").stdout
        assert "MachineOf=shop-web.service" in helper and "BindsTo=shop-web.service" in helper
        eventually(lambda: "tick" in main.exec(["journalctl", "-u", "shop-tick.service", "--no-pager", "-o", "cat"],
                                          check=False).stdout, 15, "the helper's output in the journal")

        lab.fleetctl("stop", "shop-web.service")
        for name in names:
            eventually(lambda: show(main, name, "ActiveState") == "inactive", 20, f"{name} to stop")
        eventually(lambda: not processes(main, rf"httpd -f -p {port}|sleep 100000|while true; do echo tick|--machine=shop-"),
             20, "no process of the pod left")
    finally:
        destroy(lab, *names)


def test_missing_image_and_missing_command_fail_with_a_clear_message(lab, busybox):
    try:
        gone = lab.fleetctl("run", "gone", "--image", "nosuchimage", "--", "sh", check=False, timeout=120)
        bad = lab.fleetctl("run", "bad", "--image", "busybox", "--", "nosuchcommand", "-x", check=False, timeout=120)
        assert gone.returncode == 1 and "Unit gone.service failed on " in gone.stderr
        assert bad.returncode == 1 and "Unit bad.service failed on " in bad.stderr
        states = {r[0]: r[2] for r in rows(lab, "list-units")}
        assert states["gone.service"] == "failed" and states["bad.service"] == "failed"
        status = lab.fleetctl(*api(lab), "status", "gone.service", "bad.service", check=False, timeout=60)
        assert 'image "nosuchimage" not found on this machine' in status.stdout, status.stdout + status.stderr
        assert "nor on any other machine" in status.stdout
        assert 'command "nosuchcommand" not found in image "busybox"' in status.stdout
        journal = lab.fleetctl(*api(lab), "journal", "gone.service", check=False, timeout=60)
        assert 'image "nosuchimage" not found' in journal.stdout
    finally:
        destroy(lab, "gone.service", "bad.service")


def test_bad_container_section_is_refused_at_submit(lab, tmp_path):
    path = tmp_path / "broken.service"
    path.write_text("[X-Container]\nImage=busybox\nCommand=sh\nPortz=80\n")
    out = lab.fleetctl("submit", str(path), check=False)
    assert out.returncode == 1
    assert "unit broken.service: [X-Container] Portz: unknown key" in out.stderr
    assert all(r[0] != "broken.service" for r in rows(lab, "list-unit-files"))


def test_fleetd_restart_adopts_running_containers(lab, busybox):
    port = 18185
    try:
        lab.fleetctl("run", "keep", "--image", "busybox", "--runtime", "nspawn", "--port", str(port),
                     "--", "httpd", "-f", "-p", str(port), "-h", "/www", timeout=120)
        node, _ = placement(lab, "keep.service")
        pid = show(node, "keep.service", "MainPID")
        node.exec(["systemctl", "kill", "-s", "KILL", "fleetd.service"])
        eventually(lambda: show(node, "fleetd.service", "ActiveState") == "active", 30, "fleetd to come back")
        time.sleep(3)  # a few agent passes
        assert show(node, "keep.service", "MainPID") == pid  # adopted: not restarted
        assert PAGE in http_get(node.ip, port)
    finally:
        destroy(lab, "keep.service")


def _payload_uid_map(node, port: int) -> list[str]:
    lines = [line for line in processes(node, rf"httpd -f -p {port}") if line.split()[1].endswith("httpd")]
    assert len(lines) == 1, lines
    return node.exec(["cat", f"/proc/{lines[0].split()[0]}/uid_map"]).stdout.split()


def test_nspawn_containers_get_a_user_namespace_by_default(lab, busybox, tmp_path):
    """Runtime=nspawn: the container's root is an unprivileged uid range of the node (issue 17),
    and it still serves HTTP; PrivateUsers=no opts out."""
    units = {"userns.service": ("", 18186), "hostns.service": ("PrivateUsers=no\n", 18187)}
    try:
        for name, (extra, port) in units.items():
            path = tmp_path / name
            path.write_text(f"[Unit]\nDescription={name}\n\n[X-Container]\nImage=busybox\nRuntime=nspawn\n"
                            f"{extra}Command=httpd -f -p {port} -h /www\n")
            lab.fleetctl("start", str(path), timeout=180)
        node, state = placement(lab, "userns.service")
        assert state == "active"
        port = units["userns.service"][1]
        assert PAGE in eventually(lambda: http_get(node.ip, port), 20, "the userns container to serve")
        uid_map = _payload_uid_map(node, port)
        assert uid_map != ["0", "0", "4294967295"] and uid_map[0] == "0" and uid_map[2] == "65536"
        assert int(uid_map[1]) >= 0x80000  # its root is no uid the node uses
        assert "--private-users=" in lab.fleetctl("cat", "--rendered", "userns.service").stdout

        other, _ = placement(lab, "hostns.service")
        port = units["hostns.service"][1]
        assert PAGE in eventually(lambda: http_get(other.ip, port), 20, "the opted-out container to serve")
        assert _payload_uid_map(other, port) == ["0", "0", "4294967295"]
        assert "--private-users" not in lab.fleetctl("cat", "--rendered", "hostns.service").stdout
    finally:
        destroy(lab, *units)


def test_launcher_containers_get_a_user_namespace_and_seccomp_by_default(lab, busybox, tmp_path):
    """Runtime=launcher (fleet-run): the container's root is an unprivileged uid range of the node
    (/proc/PID/uid_map), the image's files still belong to its root, it serves HTTP, and mount,
    a nested user namespace, reboot and sethostname are refused inside (issue 17);
    PrivateUsers=no opts out of the namespace only."""
    probe = ("cat /proc/self/uid_map; ls -ln /bin/busybox; "
             'grep -E "^(NoNewPrivs|Seccomp):" /proc/self/status; '
             "mount -t tmpfs x /mnt; echo mount=$?; unshare -U true; echo unshare=$?; "
             "reboot -f; echo reboot=$?; hostname other; echo hostname=$?; "
             "ping -c1 -W2 127.0.0.1 >/dev/null; echo ping=$?")
    units = {"lnuserns.service": ("", 18188), "lnhostns.service": ("PrivateUsers=no\n", 18189)}
    try:
        for name, (extra, port) in units.items():
            path = tmp_path / name
            command = f"sh -c '({probe}) > /www/probe.txt 2>&1; exec httpd -f -p {port} -h /www'"
            path.write_text(f"[Unit]\nDescription={name}\n\n[X-Container]\nImage=busybox\n"
                            f"{extra}Command={command}\n")
            lab.fleetctl("start", str(path), timeout=180)
        node, state = placement(lab, "lnuserns.service")
        assert state == "active"
        port = units["lnuserns.service"][1]
        assert PAGE in eventually(lambda: http_get(node.ip, port), 30, "the userns container to serve")
        uid_map = _payload_uid_map(node, port)
        assert uid_map[0] == "0" and uid_map[2] == "65536" and int(uid_map[1]) >= 0x80000
        rendered = lab.fleetctl("cat", "--rendered", "lnuserns.service").stdout
        assert f"--private-users={uid_map[1]}:65536" in rendered
        report = http_get(node.ip, port, "/probe.txt").decode()
        assert report.split()[:3] == uid_map            # what the container itself sees
        owner = next(line for line in report.splitlines() if line.endswith("/bin/busybox")).split()
        assert owner[2:4] == ["0", "0"]                 # the image's files are its root's
        assert re.search(r"NoNewPrivs:\s+1", report) and re.search(r"Seccomp:\s+2", report)
        # ping: a raw socket needs CAP_NET_RAW in the user namespace owning the (node's) network
        for what in ("mount", "unshare", "reboot", "hostname", "ping"):
            assert re.search(rf"^{what}=[1-9]", report, re.M), report
        assert "unshare(0x10000000): Operation not permitted" in report
        # the node's image store is on a tmpfs (fleet-lab), which takes idmapped mounts: the image
        # is shown through one, no copy is made (the copy, for overlayfs: test_launcher_hardening)
        assert node.exec(["ls", "/var/lib/fleet/images/userns"], check=False).returncode != 0

        other, _ = placement(lab, "lnhostns.service")
        port = units["lnhostns.service"][1]
        assert PAGE in eventually(lambda: http_get(other.ip, port), 30, "the opted-out container to serve")
        assert _payload_uid_map(other, port) == ["0", "0", "4294967295"]
        assert "--private-users=no" in lab.fleetctl("cat", "--rendered", "lnhostns.service").stdout
        report = http_get(other.ip, port, "/probe.txt").decode()
        assert re.search(r"^unshare=[1-9]", report, re.M)   # the seccomp filter stays
        assert re.search(r"^ping=0", report, re.M), report   # root's CAP_NET_RAW is real here
    finally:
        destroy(lab, *units)
