"""The local lab, for real: systemd-nspawn nodes on overlay roots, a bridge, etcd, fleetd's unit.

Needs root, systemd-nspawn and etcd; skipped with the reason otherwise. One 3-node lab for the
module (fleetd installed: its unit and config are checked, whether it runs is not).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fleetd.errors import LabError
from fleetlab import Lab
from fleetlab.config import LAB_API_PORT
from fleetlab.sysutil import ProcRef, memory_v1_hierarchy, wait_until

pytest_plugins = ["fleetlab.pytest_plugin"]
pytestmark = pytest.mark.lab(nodes=3)

CHECKOUT = Path(__file__).resolve().parents[2]


def tcp_ok(node, ip: str, port: int, timeout: float = 2.0) -> bool:
    """Whether `node` can open a TCP connection to ip:port."""
    proc = node.exec(f"timeout {timeout} bash -c 'echo > /dev/tcp/{ip}/{port}'", check=False, timeout=timeout + 10)
    return proc.returncode == 0


def host_tcp_ok(ip: str, port: int, timeout: float = 2.0) -> bool:
    import socket

    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def leftovers(name: str, node_names: list[str], procs: list[ProcRef]) -> list[str]:
    """Everything of lab `name` still on the host, found with raw system queries."""
    found = []
    mounts = Path("/proc/self/mounts").read_text()
    found += [line for line in mounts.splitlines() if f"/fleetlab/{name}/" in line or f"fleetlab-{name} " in line]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    found += [f"netns {n}" for n in node_names if n in netns]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found += [f"link {n}" for n in [f"fl-{name}", *node_names] if re.search(rf"^\d+: {re.escape(n)}[@:]", links, re.M)]
    found += [f"process {p.pid}" for p in procs if p.alive()]
    found += [str(p) for p in (Path("/run/fleetlab", name), Path("/sys/fs/cgroup/systemd/fleetlab", name),
                               Path("/sys/fs/cgroup/unified/fleetlab", name),
                               Path("/sys/fs/cgroup/memory/fleetlab", name)) if p.exists()]
    return found


def lab_procs(lab: Lab) -> list[ProcRef]:
    return [p for n in lab.nodes for p in (n.state.nspawn, n.state.init) if p is not None]


# --- the module lab -------------------------------------------------------------


def test_nodes_have_own_identity_and_root(lab):
    nodes = lab.nodes
    assert [n.name for n in nodes] == [f"{lab.name}-n{i}" for i in (1, 2, 3)]
    ids = [n.machine_id for n in nodes]
    assert len(set(ids)) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    host_id = Path("/etc/machine-id").read_text().strip()
    for node in nodes:
        assert node.running and node.init_pid != node.state.nspawn.pid
        out = node.exec("hostname; cat /etc/machine-id; systemctl is-active fleetlab-node.target").stdout.split()
        assert out == [node.name, node.machine_id, "active"]
        assert node.machine_id != host_id
        # the node's root is its own overlay: a write inside lands in its upper dir, not on the host
        node.exec("echo x > /root/fleetlab-probe")
        assert Path(node.state.upper, "root/fleetlab-probe").read_text() == "x\n"
        assert not Path("/root/fleetlab-probe").exists()
    assert nodes[0].exec("cat /root/fleetlab-probe").stdout == "x\n"
    mounts = Path("/proc/self/mounts").read_text()
    for node in nodes:
        assert re.search(rf"^overlay {re.escape(node.state.root)} overlay \S*lowerdir=/,", mounts, re.M)


def test_nodes_reach_each_other_and_the_host(lab):
    n1, n2, n3 = lab.nodes
    assert [n.ip for n in lab.nodes] == [str(lab.subnet.network_address + 10 + i) for i in (1, 2, 3)]
    assert tcp_ok(n2, n1.ip, 2380) and tcp_ok(n3, n2.ip, 2379) and tcp_ok(n1, n3.ip, 2380)
    for node in lab.nodes:
        assert host_tcp_ok(node.ip, 2379)
    # nothing outside the lab's subnet is reachable from a node (no default route)
    routes = n1.exec("ip -4 route").stdout
    assert "default" not in routes and str(lab.subnet) in routes


def test_etcd_cluster_of_three_is_healthy_and_replicates(lab):
    lab.wait_etcd_healthy(timeout=30)  # `up` waited already; a loaded host may be slow to answer
    health = lab.etcd_health()
    assert sorted(health) == sorted(f"https://{n.ip}:2379" for n in lab.nodes)  # TLS by default
    assert all(health.values())
    members = json.loads(subprocess.run(
        ["etcdctl", f"--endpoints={lab.etcd_endpoints[0]}", *lab.etcd_tls.args(), "member", "list", "-w", "json"],
        env={**os.environ, "ETCDCTL_API": "3"}, capture_output=True, text=True, check=True).stdout)["members"]
    assert sorted(m["name"] for m in members) == [n.name for n in lab.nodes]
    # inside a node, etcdctl with the node's certificate (etcd user <node>, the fleet key prefix)
    key = f"{lab.etcd_key_prefix}fleetlab-test/k"
    lab.node(1).exec(f"{lab.node_etcdctl()} put {key} hello")
    got = lab.node(3).exec(f"{lab.node_etcdctl()} get --print-value-only {key}").stdout
    assert got.strip() == "hello"
    lab.node(1).exec(f"{lab.node_etcdctl()} del {key}")
    # etcd refuses: no certificate at all, and a node's user outside the fleet key prefix
    plain = subprocess.run(["etcdctl", f"--endpoints={lab.etcd_endpoints[0]}", "--cacert", lab.etcd_tls.ca,
                            "--command-timeout=3s", "get", key], env={"ETCDCTL_API": "3", "PATH": os.environ["PATH"]},
                           capture_output=True, text=True)
    assert plain.returncode != 0
    outside = lab.node(1).exec(f"{lab.node_etcdctl()} put /fleetlab-test/k hello", check=False)
    assert outside.returncode != 0 and "permission denied" in outside.stderr


def test_fleetd_unit_and_config_are_installed(lab):
    node = lab.node(2)
    unit = node.exec("systemctl cat fleetd.service").stdout
    assert f"ExecStart={CHECKOUT}/.venv/bin/fleetd --config /etc/fleet/fleet.conf" in unit
    assert len(re.findall(r"^ExecStart=", unit, re.M)) == 1
    assert "fleetlab-node.target" in node.exec("systemctl show -p WantedBy --value fleetd.service").stdout
    conf = node.exec("cat /etc/fleet/fleet.conf").stdout
    assert f"etcd_servers={','.join(lab.etcd_endpoints)}\n" in conf
    assert f"public_ip={node.ip}\n" in conf
    assert f'metadata="hostname={node.name}"\n' in conf
    assert 'agent_ttl="5s"\n' in conf and "engine_reconcile_interval=1\n" in conf
    # the checkout (and its venv) is visible inside the node through the overlay
    node.exec(f"test -f {CHECKOUT}/pyproject.toml && test -x {CHECKOUT}/.venv/bin/python")


def test_wait_fleetd_returns_once_every_fleetd_is_registered_and_its_api_listens(lab):
    """fleetd sends READY=1 (Type=notify) after registering its machine and opening its API:
    once wait_fleetd has seen fleetd.service active everywhere, both hold at once."""
    lab.wait_fleetd()
    refused = [n.name for n in lab.nodes if not host_tcp_ok(n.ip, LAB_API_PORT, timeout=1)]
    assert not refused, f"API port {LAB_API_PORT} refused on {refused}"
    listed = lab.fleetctl("list-machines", "--no-legend", "--full").stdout.split()
    assert {n.machine_id for n in lab.nodes} <= set(listed)


def test_env_and_cli_reach_the_lab(lab):
    env = lab.env()
    assert env["FLEETCTL_ENDPOINT"] == ",".join(lab.etcd_endpoints) and env["FLEETCTL_DRIVER"] == "etcd"
    assert env["FLEETCTL_CERT_FILE"].endswith("/pki/admin.pem") and env["ETCDCTL_KEY"] == env["FLEETCTL_KEY_FILE"]
    cli = [sys.executable, "-m", "fleetlab"]
    status = json.loads(subprocess.run([*cli, "status", "--name", lab.name, "--json"],
                                       capture_output=True, text=True, check=True).stdout)
    assert [n["machine_id"] for n in status["nodes"]] == [n.machine_id for n in lab.nodes]
    out = subprocess.run([*cli, "exec", f"{lab.name}-n3", "cat", "/etc/hostname"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"{lab.name}-n3"
    exports = subprocess.run([*cli, "env", "--name", lab.name], capture_output=True, text=True, check=True).stdout
    # a user's shell gets the API driver (status and journal relayed by fleetd, no ssh), etcdctl etcd
    assert f"export FLEETCTL_ENDPOINT={lab.api_url(1)}" in exports and "export FLEETCTL_DRIVER=api" in exports
    assert f"export ETCDCTL_ENDPOINTS={env['ETCDCTL_ENDPOINTS']}" in exports


def unit_memory_limit(node, unit: str) -> str | None:
    """The memory limit in the node's cgroup of `unit` (v1 memory.limit_in_bytes or cgroup2
    memory.max), or None if the node has no such file."""
    cgroup = node.exec(["systemctl", "show", "-p", "ControlGroup", "--value", unit]).stdout.strip()
    assert cgroup, f"{unit}: no ControlGroup"
    for path in (f"/sys/fs/cgroup/memory{cgroup}/memory.limit_in_bytes", f"/sys/fs/cgroup/unified{cgroup}/memory.max",
                 f"/sys/fs/cgroup{cgroup}/memory.max"):
        proc = node.exec(["cat", path], check=False)
        if proc.returncode == 0:
            return proc.stdout.strip()
    return None


def test_node_systemd_enforces_memory_max(lab):
    """A unit's MemoryMax= is in its cgroup in the node, and a unit going over it is OOM-killed
    by the kernel while the same program under a higher limit finishes."""
    if memory_v1_hierarchy() is None:
        pytest.skip("the host has no cgroup v1 memory hierarchy at /sys/fs/cgroup/memory, the only "
                    "memory controller fleetlab hands to its nodes")
    node = lab.node(1)
    hog = ["python3", "-c", "x = bytearray(64 << 20); import time; time.sleep(0.5)"]
    try:
        node.exec(["systemd-run", "--unit=fl-memtest", "-p", "MemoryMax=64M", "sleep", "300"])
        assert unit_memory_limit(node, "fl-memtest.service") == str(64 << 20)
        over = node.exec(["systemd-run", "--quiet", "--wait", "--unit=fl-memhog", "-p", "MemoryMax=16M", *hog],
                         check=False, timeout=60)
        assert over.returncode != 0
        assert node.exec(["systemctl", "show", "-p", "Result,ExecMainStatus", "--value", "fl-memhog"]).stdout.split() \
            == ["signal", "9"]
        under = node.exec(["systemd-run", "--quiet", "--wait", "--unit=fl-memok", "-p", "MemoryMax=256M", *hog],
                          check=False, timeout=60)
        assert under.returncode == 0, under.stderr
    finally:
        node.exec("systemctl stop fl-memtest; systemctl reset-failed fl-memhog fl-memok", check=False)


def test_kill_crashes_the_node_and_start_boots_it_again(lab):
    node = lab.node(3)
    init, nspawn = node.state.init, node.state.nspawn
    node.kill()
    try:
        assert not init.alive() and not nspawn.alive() and not node.running
        assert node.system_state() == "offline"
        # two of three etcd members keep the quorum (once they elected a leader, if node 3 led)
        put = f"{lab.node_etcdctl()} --command-timeout=3s put {lab.etcd_key_prefix}fleetlab-test/after-kill 1"
        assert wait_until(lambda: lab.node(1).exec(put, check=False).returncode == 0, 30, interval=0.5)
    finally:
        if not node.running:
            node.start()
    assert node.running and node.init_pid != init.pid
    assert node.exec("cat /etc/machine-id").stdout.strip() == node.machine_id
    assert node.exec("cat /root/fleetlab-probe").stdout == "x\n"  # same upper dir
    lab.wait_etcd_healthy(timeout=30)
    got = node.exec(f"{lab.node_etcdctl()} get --print-value-only {lab.etcd_key_prefix}fleetlab-test/after-kill").stdout
    assert got.strip() == "1"


def test_partition_cuts_the_node_off_and_heal_restores_it(lab):
    n1, n2, _ = lab.nodes
    node_init = n2.init_pid
    n2.partition()
    try:
        assert not tcp_ok(n1, n2.ip, 2379, timeout=1)
        assert not tcp_ok(n2, n1.ip, 2380, timeout=1)
        assert not host_tcp_ok(n2.ip, 2379, timeout=1)
        assert n2.init_pid == node_init and n2.exec("systemctl is-system-running", check=False).stdout.strip() in (
            "running", "degraded")
        assert tcp_ok(n2, "127.0.0.1", 2379)  # the node itself still works
    finally:
        n2.heal()
    assert tcp_ok(n1, n2.ip, 2379) and host_tcp_ok(n2.ip, 2379)
    lab.wait_etcd_healthy(timeout=30)


# --- more labs ------------------------------------------------------------------


def test_two_labs_run_at_once_and_down_removes_one(lab, lab_factory):
    other = lab_factory(nodes=1, fleetd=False)
    assert other.subnet != lab.subnet and not other.subnet.overlaps(lab.subnet)
    other.wait_etcd_healthy(timeout=30)
    lab.wait_etcd_healthy(timeout=30)
    only = other.node(1)
    assert only.exec("hostname").stdout.strip() == f"{other.name}-n1"
    assert not tcp_ok(only, lab.node(1).ip, 2379, timeout=1)  # labs do not see each other
    procs = lab_procs(other)
    assert other.down() == []
    assert leftovers(other.name, [f"{other.name}-n1"], procs) == []
    lab.wait_etcd_healthy(timeout=30)
    assert other.down() == []  # idempotent


def test_failed_up_is_rolled_back(lab_factory):
    broken = Lab(lab_factory.new_name(), nodes=2, fleetd=False, boot_timeout=0.01)
    with pytest.raises(LabError, match="after 0.01s"):
        broken.up()
    assert leftovers(broken.name, [f"{broken.name}-n1", f"{broken.name}-n2"], []) == []
    assert not any(f"{broken.name}-n" in line for line in subprocess.run(
        ["pgrep", "-af", "systemd-nspawn"], capture_output=True, text=True).stdout.splitlines())


def test_hanging_fleetd_does_not_hold_up_the_boot(lab_factory):
    """A fleetd that never reports ready (Type=notify) leaves the node booted; built-in unit used."""
    fake = Path(tempfile.mkdtemp(prefix="fleetlab-checkout-", dir="/var/tmp"))
    try:
        (fake / "pyproject.toml").write_text("")
        (fake / ".venv/bin").mkdir(parents=True)
        (fake / ".venv/bin/fleetd").write_text("#!/bin/sh\nexec sleep 1000\n")
        (fake / ".venv/bin/fleetd").chmod(0o755)
        started = time.monotonic()
        small = lab_factory(nodes=1, checkout=fake)
        assert time.monotonic() - started < 30
        node = small.node(1)
        unit = node.exec("systemctl cat fleetd.service").stdout
        assert f"ExecStart={fake}/.venv/bin/fleetd --config /etc/fleet/fleet.conf" in unit
        assert "Type=notify" in unit and "Restart=always" in unit and "RestartSec=1" in unit
        assert node.exec("systemctl is-active fleetd.service", check=False).stdout.strip() == "activating"
        # wait_fleetd waits for READY=1 (systemd's `active`), which this fleetd never sends
        with pytest.raises(LabError, match=rf"fleetd.service not active after 1s: {node.name} activating$"):
            small.wait_fleetd(timeout=1)
        assert small.down() == []
    finally:
        for path in sorted(fake.rglob("*"), reverse=True):
            path.unlink() if not path.is_dir() else path.rmdir()
        fake.rmdir()


# --- last: the module lab goes away completely -----------------------------------


def test_down_leaves_nothing(lab):
    procs = lab_procs(lab)
    names = [n.name for n in lab.nodes]
    assert procs and all(p.alive() for p in procs)
    assert lab.down() == []
    assert wait_until(lambda: not leftovers(lab.name, names, procs), 5)
    assert leftovers(lab.name, names, procs) == []
    assert lab.down() == []
