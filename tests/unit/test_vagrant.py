"""The Vagrant lab: provisioning output is valid for fleetd, and the Vagrantfile validates.

VMs cannot be booted here (boxes cannot be downloaded); `vagrant validate` checks the
Vagrantfile offline where Debian's vagrant package is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fleetd.config import load_config
from fleetd.unit.file import UnitFile

VAGRANT = Path(__file__).resolve().parents[2] / "vagrant"


def provision(tmp_path: Path, index: int, count: int) -> Path:
    root = tmp_path / f"vm{index}"
    env = dict(os.environ, ROOT=str(root), UNIT_SOURCE=str(VAGRANT.parent / "units" / "fleetd.service"))
    subprocess.run(["bash", str(VAGRANT / "provision.sh"), str(index), str(count), "172.17.8"],
                   check=True, env=env, capture_output=True, text=True)
    return root


@pytest.mark.parametrize("count", [1, 3, 5])
def test_provisioned_config_is_what_fleetd_expects(tmp_path, count):
    for index in range(1, count + 1):
        root = provision(tmp_path, index, count)
        cfg = load_config(root / "etc/fleet/fleet.conf", env={})
        members = min(count, 3)
        assert cfg.etcd.endpoints == tuple(f"http://172.17.8.{100 + i}:2379" for i in range(1, members + 1))
        assert cfg.public_ip == f"172.17.8.{100 + index}"
        assert dict(cfg.metadata) == {"hostname": f"fleet-{index:02d}", "vm": "vagrant"}
        assert cfg.agent_ttl == 5.0
        unit = UnitFile.parse((root / "etc/systemd/system/fleetd.service").read_bytes())
        assert unit.values("Service", "ExecStart") == ["/opt/fleet-py/.venv/bin/fleetd --config /etc/fleet/fleet.conf"]
        etcd_unit = root / "etc/systemd/system/fleet-etcd.service"
        assert etcd_unit.exists() == (index <= members)
        if etcd_unit.exists():
            text = UnitFile.parse(etcd_unit.read_bytes()).values("Service", "ExecStart")[0]
            assert text.count("=http://172.17.8.") == 4 + members  # 4 own URLs + the initial cluster


@pytest.mark.deep  # vagrant (ruby) takes seconds of CPU: the full suite runs it
def test_vagrantfile_validates():
    if shutil.which("vagrant") is None:
        pytest.skip("Debian's vagrant package is not installed (apt-get install vagrant)")
    env = dict(os.environ, VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_HOME=str(Path("/tmp/fleet-vagrant-home")))
    result = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=VAGRANT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Vagrantfile validated successfully" in result.stdout
    bad = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=VAGRANT, env=dict(env, FLEET_NODES="0"),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "FLEET_NODES must be between 1 and 9" in bad.stdout + bad.stderr
