"""End-to-end on a real 3-node lab: fleetctl -> etcd -> engine -> agents -> systemd, and back.

The acceptance scenarios of the end-to-end slice: machines listed, 6 units spread 2/2/2 and
active in systemd, stop/unload/destroy, --replace, fleetd SIGKILL adoption. Figures printed.
"""

from __future__ import annotations

import re
import statistics
import time
from collections import Counter
from pathlib import Path

import pytest

from fleetlab.sysutil import eventually

pytest_plugins = ["fleetlab.pytest_plugin"]
pytestmark = pytest.mark.lab(nodes=3, wait_fleetd=True, agent_ttl="3s")

UNIT = '[Unit]\nDescription={desc}\n\n[Service]\nExecStart=/bin/sh -c "while true; do echo {desc}; sleep {sleep}; done"\n'


def write_units(tmp_path: Path, prefix: str, count: int, sleep: int = 5) -> list[str]:
    paths = []
    for i in range(1, count + 1):
        path = tmp_path / f"{prefix}{i}.service"
        path.write_text(UNIT.format(desc=f"{prefix} {i}", sleep=sleep))
        paths.append(str(path))
    return paths


def rows(lab, *args: str) -> list[list[str]]:
    out = lab.fleetctl(*args, "--no-legend", "--full").stdout
    return [line.split() for line in out.splitlines() if line.strip()]


def node_by_ip(lab, ip: str):
    return next(n for n in lab.nodes if n.ip == ip)


def systemctl(node, *args: str) -> str:
    return node.exec(["systemctl", *args], check=False).stdout.strip()


def test_list_machines_shows_every_node(lab):
    machines = rows(lab, "list-machines")
    assert sorted(m[0] for m in machines) == sorted(n.machine_id for n in lab.nodes)
    by_id = {m[0]: m for m in machines}
    for node in lab.nodes:
        assert by_id[node.machine_id][1] == node.ip
        assert f"hostname={node.name}" in by_id[node.machine_id][2]
    legend = lab.fleetctl("list-machines").stdout.splitlines()
    assert legend[0].split() == ["MACHINE", "IP", "METADATA"]
    assert all(re.fullmatch(r"[0-9a-f]{8}\.\.\.", line.split()[0]) for line in legend[1:])


def test_six_units_spread_and_come_and_go(lab, tmp_path):
    paths = write_units(tmp_path, "six", 6)
    result = lab.fleetctl("start", *paths)
    launched = [line for line in result.stdout.splitlines() if " launched on " in line]
    assert len(launched) == 6, result.stdout
    units = rows(lab, "list-units")
    assert len(units) == 6 and all(u[2:] == ["active", "running"] for u in units)
    per_machine = Counter(u[1].split("/")[0] for u in units)
    assert sorted(per_machine.values()) == [2, 2, 2]
    for name, machine, *_ in units:  # systemd on the node agrees with fleet
        node = node_by_ip(lab, machine.split("/")[1])
        assert systemctl(node, "is-active", name) == "active"
        assert "linked-runtime" in systemctl(node, "show", "-p", "UnitFileState", name)

    names = [Path(p).name for p in paths]
    lab.fleetctl("stop", *names)
    assert {u[2] for u in rows(lab, "list-units")} == {"inactive"}
    for name, machine, *_ in rows(lab, "list-units"):
        assert systemctl(node_by_ip(lab, machine.split("/")[1]), "is-active", name) == "inactive"
    placed = {u[0]: node_by_ip(lab, u[1].split("/")[1]) for u in rows(lab, "list-units")}

    lab.fleetctl("unload", *names)
    assert rows(lab, "list-units") == []
    for name, node in placed.items():
        assert systemctl(node, "show", "-p", "LoadState", "--value", name) == "not-found"
        assert node.exec(["test", "-e", f"/run/fleet/units/{name}"], check=False).returncode == 1
    assert {u[2] for u in rows(lab, "list-unit-files")} == {"inactive"}

    lab.fleetctl("start", *names)
    destroyed = lab.fleetctl("destroy", *names).stdout
    assert destroyed.count("Destroyed ") == 6
    assert rows(lab, "list-unit-files") == []
    eventually(lambda: rows(lab, "list-units") == [])
    for name, node in placed.items():
        eventually(lambda: systemctl(node, "show", "-p", "LoadState", "--value", name) == "not-found")


def test_replace_restarts_with_the_new_body(lab, tmp_path):
    (path,) = write_units(tmp_path, "repl", 1, sleep=5)
    lab.fleetctl("start", path)
    (unit,) = rows(lab, "list-units")
    node = node_by_ip(lab, unit[1].split("/")[1])
    pid_before = systemctl(node, "show", "-p", "MainPID", "--value", "repl1.service")
    Path(path).write_text(UNIT.format(desc="repl 1 v2", sleep=7))
    lab.fleetctl("start", "--replace", path)
    assert "sleep 7" in lab.fleetctl("cat", "repl1.service").stdout
    (unit,) = rows(lab, "list-units")
    node = node_by_ip(lab, unit[1].split("/")[1])
    assert systemctl(node, "is-active", "repl1.service") == "active"
    assert "sleep 7" in systemctl(node, "cat", "repl1.service")
    assert systemctl(node, "show", "-p", "MainPID", "--value", "repl1.service") != pid_before
    lab.fleetctl("destroy", "repl1.service")


def test_fleetd_sigkill_keeps_units_running(lab, tmp_path):
    paths = write_units(tmp_path, "keep", 3)
    lab.fleetctl("start", *paths)
    before = {}
    for name, machine, *_ in rows(lab, "list-units"):
        node = node_by_ip(lab, machine.split("/")[1])
        before[name] = (node, systemctl(node, "show", "-p", "MainPID", "--value", name))
    for node in lab.nodes:
        node.exec(["systemctl", "kill", "-s", "KILL", "fleetd.service"])
    for node in lab.nodes:  # Restart=always brings fleetd back; it adopts the running units
        eventually(lambda: systemctl(node, "is-active", "fleetd.service") == "active")
    time.sleep(2)
    for name, (node, pid) in before.items():
        assert systemctl(node, "show", "-p", "MainPID", "--value", name) == pid, name
        assert systemctl(node, "is-active", name) == "active"
    eventually(lambda: len(rows(lab, "list-machines")) == 3)
    assert {u[2] for u in rows(lab, "list-units")} == {"active"}
    lab.fleetctl("destroy", *[Path(p).name for p in paths])


def test_figures_start_latency(lab, tmp_path):
    """Printed, not asserted: time from `fleetctl start` to active, for 1 unit and for 30."""
    single = []
    for i in range(5):
        (path,) = write_units(tmp_path, f"lat{i}-", 1)
        started = time.monotonic()
        lab.fleetctl("start", path)
        single.append(time.monotonic() - started)
        lab.fleetctl("destroy", Path(path).name)
    paths = write_units(tmp_path, "burst", 30)
    started = time.monotonic()
    lab.fleetctl("start", *paths)
    burst = time.monotonic() - started
    assert len([u for u in rows(lab, "list-units") if u[2] == "active"]) == 30
    lab.fleetctl("destroy", *[Path(p).name for p in paths])
    print(f"\nFIGURE start 1 unit until active (fleetctl process included): "
          f"median {statistics.median(single):.2f}s over {len(single)} runs")
    print(f"FIGURE start 30 units until all active: {burst:.2f}s")
