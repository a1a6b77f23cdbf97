"""`fleet-lab up` (the command, as a user runs it) makes a first image available on every node:
busybox, imported with fleetctl, runs as a container unit on any node without a fetch; the nodes
have the checkout's fleet-confd/fleetctl on PATH and the nginx template; and after
`eval "$(fleet-lab env)"` fleetctl uses the API driver: `status` and `journal` come from the
unit's machine through fleetd (no ssh)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from fleetlab.lab import Lab, host_problem, list_labs
from fleetlab.provision import NODE_NGINX_TEMPLATE, provide_busybox

REPO = Path(__file__).resolve().parents[2]
FLEET_LAB = str(REPO / ".venv" / "bin" / "fleet-lab")
UNIT = ("[X-Container]\nImage=busybox\nCommand=sh -c 'while true; do echo box alive; sleep 1; done'\n\n"
        "[X-Fleet]\nConflicts=box@*.service\n")


def shell(script: str, name: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETCTL_", "ETCDCTL_"))}
    env["PATH"] = f"{REPO / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(["bash", "-ec", f'eval "$(fleet-lab env --name {name})"\n{script}'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_up_provides_busybox_everywhere_and_env_uses_the_api(tmp_path):
    if host_problem():
        pytest.skip(host_problem())
    name = f"de{secrets.token_hex(2)}"
    try:
        up = subprocess.run([FLEET_LAB, "up", "--nodes", "2", "--name", name], capture_output=True, text=True,
                            timeout=300)
        assert up.returncode == 0, up.stderr
        lab = Lab.attach(name)
        for node in lab.nodes:
            assert f"image busybox: imported on {node.name}" in up.stdout
            assert node.exec(["sh", "-c", "for c in fleet-confd fleetctl fleet-run; do command -v $c; done"]).stdout.count("/usr/local/bin/") == 3
            assert node.exec(["test", "-s", NODE_NGINX_TEMPLATE], check=False).returncode == 0
        records = json.loads(lab.fleetctl("images", "--output", "json").stdout)
        assert sorted(r["machineID"] for r in records if any("busybox" in i["names"] for i in r["images"])) == \
            sorted(n.machine_id for n in lab.nodes)
        lines: list[str] = []
        provide_busybox(lab, lines.append)  # idempotent: nothing imported again
        assert lines == ["image busybox: already on every node"]

        (tmp_path / "box@.service").write_text(UNIT)
        exports = subprocess.run([FLEET_LAB, "env", "--name", name], capture_output=True, text=True, check=True).stdout
        assert "export FLEETCTL_DRIVER=api\n" in exports
        out = shell(f"cd {tmp_path}\nfleetctl submit box@.service\n"
                    "fleetctl start --block-attempts=120 box@1.service box@2.service\n"
                    "fleetctl list-units --no-legend --fields unit,machine\n"
                    "for u in box@1.service box@2.service; do fleetctl status $u; fleetctl journal --lines 20 $u; done",
                    name)
        assert out.returncode == 0, out.stderr
        assert "Active: active (running)" in out.stdout and "ssh" not in out.stderr.lower()
        for node in lab.nodes:  # one box per node (Conflicts=); each journal read from its machine
            assert any(f" {node.name} " in line and "box alive" in line for line in out.stdout.splitlines()), \
                out.stdout[-3000:]
    finally:
        subprocess.run([FLEET_LAB, "down", "--name", name], capture_output=True, timeout=300)
    assert name not in list_labs()
