"""The API across real nodes: status/journal of a unit on node 2, asked through node 1's fleetd.

Boots a 2-node fleetlab (systemd-nspawn, etcd, fleetd); the lab's fleet.conf makes every fleetd
also serve its API on TCP (api_tcp=<node ip>:54728, api_insecure_tcp), so node 1's fleetd relays
to node 2's.
"""

from __future__ import annotations

import json

import pytest

from fleetlab.sysutil import eventually

pytest_plugins = ["fleetlab.pytest_plugin"]
pytestmark = pytest.mark.lab(nodes=2, wait_fleetd=True)

UNIT = """[Unit]
Description=API lab test

[Service]
ExecStart=/bin/sh -c 'while true; do echo api-lab-tick; sleep 1; done'

[X-Fleet]
MachineID={machine}
"""


def test_status_and_journal_of_a_remote_unit_via_node1(lab):
    n1, n2 = lab.node(1), lab.node(2)
    for node in (n1, n2):
        assert f"api_tcp={node.ip}:" in node.exec(["cat", "/etc/fleet/fleet.conf"]).stdout
    fleetctl = [*lab.fleetctl_command(), "--endpoint", "unix:///var/run/fleet.sock"]  # node 1's own API
    eventually(lambda: n1.exec([*fleetctl, "list-machines", "--no-legend"], check=False).stdout.count("\n") == 2,
         60, "node 1's API to list both machines")

    n1.exec(["mkdir", "-p", "/root/apilab"])
    n1.exec(["sh", "-c", "cat > /root/apilab/tick.service"], input=UNIT.format(machine=n2.machine_id))
    start = n1.exec([*fleetctl, "start", "--block-attempts=60", "/root/apilab/tick.service"], check=False, timeout=90)
    assert start.returncode == 0, start.stderr
    assert f"on {n2.machine_id[:8]}.../{n2.ip}" in start.stdout

    status = n1.exec([*fleetctl, "status", "tick.service"], check=False, timeout=60)
    assert status.returncode == 0, status.stderr
    assert "tick.service - API lab test" in status.stdout and "active (running)" in status.stdout
    [entry] = json.loads(n1.exec([*fleetctl, "status", "--output", "json", "tick.service"]).stdout)
    assert entry["machineID"] == n2.machine_id and entry["exitStatus"] == 0

    journal = eventually(lambda: (j := n1.exec([*fleetctl, "journal", "--lines", "3", "tick.service"], check=False))
                   .stdout.count("api-lab-tick") and j, 30, "ticks in node 2's journal")
    assert journal.returncode == 0 and journal.stdout.count("api-lab-tick") >= 1
    # node 1 itself does not run the unit: the output really came from node 2
    assert n1.exec(["systemctl", "is-active", "tick.service"], check=False).stdout.strip() != "active"
    n1.exec([*fleetctl, "destroy", "tick.service"])
