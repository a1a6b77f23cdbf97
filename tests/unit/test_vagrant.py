"""The Vagrant lab without VMs: its node configuration is what fleetd expects and the same code as
the nspawn lab's, the box builder's inputs and cache key, and the Vagrantfile validates.

tests/vm/test_vagrant_vm.py boots the VMs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleetd.config import load_config
from fleetd.pki import ClusterPKI
from fleetd.unit.file import UnitFile
from fleetlab import box, nodeconfig
from fleetlab.etcd import member_count
from fleetlab.config import ETCD_UNIT, NODE_CA, NODE_CERT, NODE_KEY

ROOT = Path(__file__).resolve().parents[2]
VAGRANT = ROOT / "vagrant"


def nodeconfig_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m fleetlab.nodeconfig ARGS`, as a VM's provisioning runs it."""
    return subprocess.run([sys.executable, "-m", "fleetlab.nodeconfig", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def nodeconfig_here(*args: str) -> tuple[int, str]:
    """The same command in this process (click's test runner): (exit code, output). For the
    renders checked file by file; the tests below keep real processes for exit codes and
    error lines."""
    result = CliRunner().invoke(nodeconfig.main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.mark.parametrize("count", [1, 2, 5])
def test_vm_configuration_is_what_fleetd_expects(tmp_path, count):
    pki_dir = tmp_path / "pki"
    assert nodeconfig_here("pki", "--dir", str(pki_dir), "--nodes", str(count), "--subnet", "10.9.8")[0] == 0
    members = member_count(count)  # as the nspawn lab: 1 of 2 (a lost member of 2 loses quorum)
    for index in range(1, count + 1):
        root = tmp_path / f"vm{index}"
        # a VM gets only the CA certificate and its own key pair (as vagrant/provision.sh installs them)
        vm_pki = tmp_path / f"vm{index}-pki"
        vm_pki.mkdir()
        for name in ("ca.pem", f"fleet-{index:02d}.pem", f"fleet-{index:02d}.key"):
            shutil.copy(pki_dir / name, vm_pki / name)
        code, output = nodeconfig_here("write", "--index", str(index), "--nodes", str(count), "--subnet", "10.9.8",
                                       "--pki-dir", str(vm_pki), "--root", str(root))
        assert code == 0, output
        cfg = load_config(root / "etc/fleet/fleet.conf", env={})
        assert cfg.etcd.endpoints == tuple(f"https://10.9.8.{100 + i}:2379" for i in range(1, members + 1))
        assert cfg.public_ip == f"10.9.8.{100 + index}"
        assert dict(cfg.metadata) == {"hostname": f"fleet-{index:02d}", "vm": "vagrant"}
        assert cfg.api_socket_group == "fleet"
        assert cfg.api_tcp == f"10.9.8.{100 + index}:54728" and cfg.api_certfile == NODE_CERT
        unit = UnitFile.parse((root / "etc/systemd/system/fleetd.service").read_bytes())
        assert unit.values("Service", "ExecStart") == ["/opt/fleet-py/.venv/bin/fleetd --config /etc/fleet/fleet.conf"]
        wants = root / "etc/systemd/system/multi-user.target.wants"
        assert os.readlink(wants / "fleetd.service") == "../fleetd.service"
        etcd_unit = root / "etc/systemd/system" / ETCD_UNIT
        assert etcd_unit.exists() == (index <= members) == (wants / ETCD_UNIT).is_symlink()
        if etcd_unit.exists():
            text = UnitFile.parse(etcd_unit.read_bytes()).values("Service", "ExecStart")[0]
            assert text.count("=https://10.9.8.") == 4 + members  # 4 own URLs + the initial cluster
            assert f"--cert-file={NODE_CERT}" in text
        key = root / NODE_KEY.lstrip("/")
        assert key.stat().st_mode & 0o777 == 0o600 and key.parent.stat().st_mode & 0o777 == 0o700
        assert (root / NODE_CA.lstrip("/")).read_text() == (pki_dir / "ca.pem").read_text()
        cert = ClusterPKI(pki_dir).read(f"fleet-{index:02d}")
        assert cert.subject.rfc4514_string().startswith(f"CN=fleet-{index:02d}") or "fleet-" in cert.subject.rfc4514_string()


def test_vm_configuration_insecure_and_errors(tmp_path):
    result = nodeconfig_cli("write", "--index", "1", "--nodes", "2", "--subnet", "10.9.8", "--insecure",
                            "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    cfg = load_config(tmp_path / "etc/fleet/fleet.conf", env={})
    assert cfg.etcd.endpoints == ("http://10.9.8.101:2379",) and cfg.api_insecure_tcp
    assert not (tmp_path / NODE_KEY.lstrip("/")).exists()
    bad = nodeconfig_cli("write", "--index", "3", "--nodes", "2", "--subnet", "10.9.8", "--insecure", "--root", str(tmp_path))
    assert bad.returncode == 2 and "--index" in bad.stderr
    no_pki = nodeconfig_cli("write", "--index", "1", "--nodes", "2", "--subnet", "10.9.8", "--root", str(tmp_path))
    assert no_pki.returncode == 2 and "--pki-dir" in no_pki.stderr


def test_pki_is_idempotent(tmp_path):
    for _ in range(2):
        assert nodeconfig_cli("pki", "--dir", str(tmp_path), "--nodes", "2", "--subnet", "10.9.8").returncode == 0
    first = (tmp_path / "fleet-01.pem").read_bytes()
    assert nodeconfig_cli("pki", "--dir", str(tmp_path), "--nodes", "3", "--subnet", "10.9.8").returncode == 0
    assert (tmp_path / "fleet-01.pem").read_bytes() == first and (tmp_path / "fleet-03.pem").exists()


def test_nspawn_lab_and_vms_share_the_render_code():
    """The lab's node files come from nodeconfig.node_files: same etcd unit and fleet.conf for the
    same cluster, differing only in the target that wants them."""
    nodes = tuple(nodeconfig.NodeSpec(f"n{i}", f"10.1.1.{i}", i <= 2, {"k": "v"}) for i in (1, 2, 3))
    lab = nodeconfig.ClusterSpec(nodes, checkout=Path("/c"), token="t", tls=False, wanted_by="fleetlab-node.target")
    vm = nodeconfig.ClusterSpec(nodes, checkout=Path("/c"), token="t", tls=False)
    a, b = (nodeconfig.node_files(c, nodes[0], None) for c in (lab, vm))
    assert a.files == b.files
    assert {k.replace("fleetlab-node.target", "multi-user.target"): v for k, v in a.links.items()} == b.links


def test_box_inputs_and_cache_key(tmp_path, monkeypatch):
    packages = box.box_packages(ROOT)
    assert {"etcd-server", "python3-venv", "linux-image-cloud-amd64", "openssh-server"} <= set(packages)
    assert not set(packages) & box.HOST_ONLY_PACKAGES
    reqs = box.python_requirements(ROOT)
    assert any(r.startswith("aetcd") for r in reqs) and any(r.startswith("setuptools") for r in reqs)
    src = tmp_path / "debian.sources"
    src.write_text("Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n")
    other = tmp_path / "vendor.list"
    other.write_text("deb https://example.invalid/apt stable main\n")
    assert box.debian_sources([src, other]) == [src]
    key = tmp_path / "vagrant.pub"
    key.write_text("ssh-rsa AAAA vagrant\n")
    inputs = box.BoxInputs(packages, reqs, [src], [], ['Acquire::Check-Valid-Until "false";'], key)
    digest = inputs.digest()
    assert digest == box.BoxInputs(packages, reqs, [src], [], ['Acquire::Check-Valid-Until "false";'], key).digest()
    assert box.BoxInputs(packages + ["extra"], reqs, [src], [], [], key).digest() != digest
    src.write_text(src.read_text() + "# changed\n")
    assert inputs.digest() != digest  # a change of the host's sources rebuilds the box
    # the hash recorded in the added box's metadata.json is what `ensure_box` compares
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path / "vh"))
    assert box.installed_box_hash() is None
    meta = tmp_path / "vh/boxes/fleet-py-VAGRANTSLASH-debian12/0/libvirt/metadata.json"
    meta.parent.mkdir(parents=True)
    meta.write_text('{"provider": "libvirt", "fleet_box_hash": "abc"}')
    assert box.installed_box_hash() == "abc"


def test_grub_cfg_names_the_kernel_and_the_root_label(tmp_path):
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/vmlinuz-6.1.0-9-cloud-amd64").write_text("")
    (tmp_path / "boot/initrd.img-6.1.0-9-cloud-amd64").write_text("")
    cfg = box._grub_cfg(tmp_path)
    assert "linux /boot/vmlinuz-6.1.0-9-cloud-amd64 root=LABEL=fleetroot" in cfg
    assert "initrd /boot/initrd.img-6.1.0-9-cloud-amd64" in cfg
    (tmp_path / "boot/initrd.img-6.1.0-9-cloud-amd64").unlink()
    with pytest.raises(Exception, match="no kernel or initrd"):
        box._grub_cfg(tmp_path)


@pytest.mark.deep  # vagrant (ruby) takes seconds of CPU: the full suite runs it
def test_vagrantfile_validates(tmp_path):
    if shutil.which("vagrant") is None:
        pytest.skip("Debian's vagrant package is not installed (apt-get install vagrant)")
    env = dict(os.environ, VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_HOME=str(tmp_path / "vagrant-home"),
               FLEET_LIBVIRT_DRIVER="qemu")
    result = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=VAGRANT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Vagrantfile validated successfully" in result.stdout
    for var, value, message in (("FLEET_NODES", "0", "FLEET_NODES must be between 1 and 9"),
                                ("FLEET_SUBNET", "10.1", "FLEET_SUBNET must be three octets"),
                                ("FLEET_LIBVIRT_DRIVER", "xen", "FLEET_LIBVIRT_DRIVER must be kvm or qemu")):
        bad = subprocess.run(["vagrant", "validate"], cwd=VAGRANT, env=dict(env, **{var: value}),
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode != 0 and message in bad.stdout + bad.stderr, (var, bad.stdout + bad.stderr)
