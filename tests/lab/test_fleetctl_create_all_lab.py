"""fleetctl's lean fast path with `POST /units` `createAll` on a real lab (insecure: the API on
plain http, as `fleet-lab bench compare` runs it): the installed fleetctl starts new units in one
request, without importing re, json, socket or urllib.parse, and the nodes' systemds run them;
a start naming units that exist already (the createAll's 409: nothing written) creates only the
new ones and waits for them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


pytest_plugins = ["fleetlab.pytest_plugin"]
pytestmark = pytest.mark.lab(nodes=2, wait_fleetd=True, insecure=True)

UNIT = "[Unit]\nDescription=lean {name}\n\n[Service]\nExecStart=/bin/sleep infinity\n"
NEVER = ("re", "json", "socket", "urllib", "enum", "selectors", "ipaddress", "click", "fleetd")


def api_fleetctl(lab, *args: str, cwd: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL_")}
    env["PYTHONPROFILEIMPORTTIME"] = "1"  # python -X importtime
    return subprocess.run([*lab.fleetctl_command(), *lab.fleetctl_api_args(1), *args], env=env, capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def imported(stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def api_requests(lab) -> dict[tuple[str, str], float]:
    """fleet_api_requests_total of node 1's fleetd (the API fleetctl talks to), by (method, code)."""
    import urllib.request

    with urllib.request.urlopen(f"{lab.api_url(1)}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("fleet_api_requests_total{"):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1:line.index("}")].split(","))
            counts[(labels["method"].strip('"'), labels["code"].strip('"'))] = float(line.rsplit(" ", 1)[1])
    return counts


def added(before: dict, after: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def node_states(lab, names: list[str]) -> dict[str, str]:
    """Each unit's ActiveState on the node that runs it (its file is there), from systemd itself."""
    found = {}
    for node in lab.nodes:
        out = node.exec(["systemctl", "show", "--property=Id,ActiveState", *names], check=False).stdout
        for block in out.strip().split("\n\n"):
            fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            if fields.get("ActiveState") == "active":
                found[fields["Id"]] = node.name
    return found


def test_new_units_started_in_one_request_then_a_mix_with_existing_ones(lab, tmp_path):
    names = [f"lean{i}.service" for i in range(8)]
    for name in names + ["lean-new.service"]:
        (tmp_path / name).write_text(UNIT.format(name=name))
    before = api_requests(lab)
    started = api_fleetctl(lab, "start", *names, cwd=tmp_path)
    assert started.returncode == 0, started.stderr[-2000:]
    writes = {k: v for k, v in added(before, api_requests(lab)).items() if k[0] != "GET"}
    assert writes == {("POST", "200"): 1}, writes  # one createAll (tests/etcd: and no lookup before it)
    lines = started.stdout.splitlines()
    assert lines[:8] == [f"Unit {n} inactive" for n in names]
    assert sorted(line.split()[1] for line in lines[8:] if " launched on " in line) == sorted(names)
    assert "fleetctl.fast_units" in imported(started.stderr)
    assert sorted(n for n in imported(started.stderr) if n.split(".")[0] in NEVER) == []
    running = node_states(lab, names)
    assert sorted(running) == sorted(names) and set(running.values()) == {n.name for n in lab.nodes}
    # two of them again with a new one: the existing ones are launched already (nothing printed
    # for them), the new one is created and waited for
    before = api_requests(lab)
    again = api_fleetctl(lab, "start", names[0], "lean-new.service", names[5], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    writes = {k: v for k, v in added(before, api_requests(lab)).items() if k[0] != "GET"}
    assert writes == {("POST", "409"): 1, ("PUT", "201"): 1}, writes  # createAll refused, then the new one
    assert again.stdout.splitlines()[0] == "Unit lean-new.service inactive"
    assert [line.split()[1] for line in again.stdout.splitlines()[1:]] == ["lean-new.service"]
    assert "lean-new.service" in node_states(lab, ["lean-new.service"])
    destroyed = api_fleetctl(lab, "destroy", *names, "lean-new.service", cwd=tmp_path)
    assert destroyed.stdout.count("Destroyed ") == 9
