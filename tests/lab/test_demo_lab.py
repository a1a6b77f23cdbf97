"""The README's main command, `./scripts/demo.sh`, on a real lab: run twice (the second run
reuses the lab and the units), its printed `fleetctl list-endpoints`, `dig` and proxy answers
checked, and the same answers checked again from here; then torn down."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest

from fleetlab.lab import Lab, host_problem, list_labs

REPO = Path(__file__).resolve().parents[2]
PAGE = "fleet busybox image"


def demo(name: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETCTL_", "ETCDCTL_"))}
    env["FLEETLAB_NAME"] = name
    proc = subprocess.run([str(REPO / "scripts" / "demo.sh")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, f"demo.sh failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def block(out: str, command: str) -> str:
    """The output printed after `$ COMMAND` up to the next `$ ` line or section."""
    start = out.index(f"$ {command}\n") + len(command) + 3
    rest = out[start:]
    end = re.search(r"^(\$ |=== )", rest, re.M)
    return rest[:end.start()] if end else rest


def check_shown(out: str, lab: Lab) -> None:
    ips = sorted(n.ip for n in lab.nodes)
    node1 = lab.nodes[0].ip
    rows = [line.split() for line in block(out, "fleetctl list-endpoints web").strip().splitlines()[1:]]
    assert sorted(r[1] for r in rows) == ["web@1.service", "web@2.service", "web@3.service"]
    assert sorted(r[3] for r in rows) == ips and {r[5] for r in rows} == {"passing"}
    assert sorted(block(out, f"dig @{node1} +short web.fleet.local").split()) == ips
    proxied = block(out, f"curl -sS -D - http://{node1}/")
    assert "HTTP/1.1 200 OK" in proxied and PAGE in proxied
    assert re.search(r"^X-Upstream: ([0-9.]+):8080", proxied, re.M).group(1) in ips
    units = block(out, "fleetctl list-units")
    assert sum(1 for line in units.splitlines() if line.startswith("global-monitor.service")) == 3
    assert sum(1 for line in units.splitlines() if line.startswith("nginx-confd.service")) == 3
    assert "Active: active (running)" in block(out, "fleetctl status web@1.service")
    assert f"{lab.dashboard_url()} (every node serves it" in out
    assert "Tear it down with: .venv/bin/fleet-lab down" in out


def test_demo_twice_shows_discovery_and_cleans_up():
    if host_problem():
        pytest.skip(host_problem())
    name = f"de{secrets.token_hex(2)}"
    try:
        first = demo(name)
        lab = Lab.attach(name)
        assert f"lab {name}: up in " in first
        assert "image busybox: imported on" in first
        check_shown(first, lab)
        # web containers on three distinct machines, each sidekick next to its web@
        listing = [line.split() for line in block(first, "fleetctl list-units").strip().splitlines()[1:]]
        at = {}
        for unit, machine, *_ in listing:
            at.setdefault(unit, machine)
        assert len({at[f"web@{i}.service"] for i in (1, 2, 3)}) == 3
        for i in (1, 2, 3):
            assert at[f"web-discovery@{i}.service"] == at[f"web@{i}.service"]

        second = demo(name)
        assert f"lab {name}: already up, reusing it" in second and "image busybox: already on every node" in second
        check_shown(second, lab)
        # the same answers, asked from here
        dig = subprocess.run(["dig", f"@{lab.nodes[1].ip}", "+short", "web.fleet.local"], capture_output=True,
                             text=True, timeout=30).stdout.split()
        assert sorted(dig) == sorted(n.ip for n in lab.nodes)
        page = subprocess.run(["curl", "-sS", "-m", "5", f"http://{lab.nodes[2].ip}/"], capture_output=True,
                              text=True, timeout=30).stdout
        assert PAGE in page
    finally:
        subprocess.run([str(REPO / ".venv" / "bin" / "fleet-lab"), "down", "--name", name], capture_output=True,
                       timeout=300)
    assert name not in list_labs()
