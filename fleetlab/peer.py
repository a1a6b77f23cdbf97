"""Peer mode: turn a lab's nodes into nodes of the original fleet v1.0.0 (Go), for comparisons.

The binaries are not part of the project: `peer_dir()` finds them at `../shared/peer/` from the
project root (its README says how they were built) or in $FLEET_PEER_DIR; `peer_problem()` says
why they cannot be used (callers skip with that reason).

`to_original_fleet(lab)` on a running lab:
1. every etcd member gets etcd's v2 API (a drop-in adding `--enable-v2`; members restart one at
   a time, so the cluster keeps its quorum and its data);
2. on every node the project's fleetd is stopped, and the original fleetd runs from the peer
   directory with its own config (`/etc/fleet/peer.conf`: the lab's etcd servers, the node's IP,
   metadata and agent_ttl) and its API socket from systemd socket activation
   (`fleet-peer.socket`: `/var/run/fleet.sock` and `IP:49153`), as fleet's own units did.

`peer_fleetctl(lab, *args)` runs the original fleetctl against it (API driver, node 1's TCP API).
`back_to_project(lab)` stops the original fleetd and starts the project's again.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from .lab import Lab
from .sysutil import run

PEER_API_PORT = 49153
PEER_CONF = "/etc/fleet/peer.conf"
PEER_SOCKET = "fleet-peer.socket"
PEER_SERVICE = "fleet-peer.service"
ETCD_DROPIN = "/run/systemd/system/fleetlab-etcd.service.d/peer-v2.conf"


def peer_dir() -> Path:
    env = os.environ.get("FLEET_PEER_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "peer"


def peer_problem() -> str | None:
    """None if the original fleet's binaries are usable, else why not."""
    where = peer_dir()
    for name in ("fleetd", "fleetctl"):
        if not os.access(where / name, os.X_OK):
            return f"the original fleet's {name} is not at {where / name} (see ../shared/peer/README.md)"
    return None


def _conf(lab: Lab, node) -> str:
    servers = ",".join(f'"{e}"' for e in lab.etcd_endpoints)
    metadata = ",".join(f"{k}={v}" for k, v in sorted((node.metadata or {}).items())) if hasattr(node, "metadata") else ""
    return (f"etcd_servers=[{servers}]\npublic_ip=\"{node.ip}\"\nagent_ttl=\"{lab.agent_ttl}\"\n"
            f"metadata=\"{metadata}\"\n")


def _units(node_ip: str) -> dict[str, str]:
    fleetd = peer_dir() / "fleetd"
    return {
        f"/run/systemd/system/{PEER_SOCKET}": (
            "[Unit]\nDescription=original fleet v1.0.0 API socket (fleetlab peer mode)\n\n"
            f"[Socket]\nListenStream=/var/run/fleet.sock\nListenStream={node_ip}:{PEER_API_PORT}\n"),
        f"/run/systemd/system/{PEER_SERVICE}": (
            "[Unit]\nDescription=original fleet v1.0.0 (fleetlab peer mode)\n"
            f"Requires={PEER_SOCKET}\nAfter={PEER_SOCKET}\n\n"
            f"[Service]\nExecStart={fleetd} -config {PEER_CONF}\nRestart=always\nRestartSec=1\n"),
    }


def _write(node, path: str, text: str) -> None:
    node.exec(["sh", "-c", f"mkdir -p {os.path.dirname(path)} && cat > {path}"], input=text)


def enable_etcd_v2(lab: Lab, timeout: float = 60.0) -> None:
    members = [n for n in lab.nodes if n.state.etcd_member]
    for node in members:
        if node.exec(["test", "-e", ETCD_DROPIN], check=False).returncode == 0:
            continue
        line = node.exec(["systemctl", "show", "-p", "ExecStart", "--value", "fleetlab-etcd.service"]).stdout
        argv = line.split("argv[]=", 1)[1].split(" ;", 1)[0].strip()
        _write(node, ETCD_DROPIN, f"[Service]\nExecStart=\nExecStart={argv} --enable-v2\n")
        node.exec(["systemctl", "daemon-reload"])
        node.exec(["systemctl", "restart", "fleetlab-etcd.service"], timeout=timeout)
        lab.wait_etcd_healthy(timeout=timeout)


def to_original_fleet(lab: Lab, timeout: float = 60.0) -> None:
    """Turn every node of `lab` into a node running the original fleetd (see the module doc)."""
    problem = peer_problem()
    if problem:
        raise RuntimeError(problem)
    enable_etcd_v2(lab, timeout)
    for node in lab.nodes:
        node.exec(["systemctl", "stop", "fleetd.service"], check=False, timeout=timeout)
        node.exec(["sh", "-c", "systemctl stop fleetd.socket 2>/dev/null; rm -f /var/run/fleet.sock"], check=False)
        _write(node, PEER_CONF, _conf(lab, node.state))
        for path, text in _units(node.ip).items():
            _write(node, path, text)
        node.exec(["systemctl", "daemon-reload"])
        node.exec(["systemctl", "start", PEER_SOCKET, PEER_SERVICE], timeout=timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = peer_fleetctl(lab, "list-machines", "--no-legend", check=False)
        if out.returncode == 0 and len(out.stdout.split("\n")) - 1 >= len(lab.nodes):
            return
        time.sleep(0.5)
    raise RuntimeError(f"lab {lab.name}: the original fleetd did not list {len(lab.nodes)} machines in {timeout:g}s")


def back_to_project(lab: Lab, timeout: float = 60.0) -> None:
    for node in lab.nodes:
        node.exec(["systemctl", "stop", PEER_SERVICE, PEER_SOCKET], check=False, timeout=timeout)
        node.exec(["systemctl", "start", "fleetd.service"], check=False, timeout=timeout)


def peer_endpoint(lab: Lab) -> str:
    return f"http://{lab.node(1).ip}:{PEER_API_PORT}"


def peer_fleetctl(lab: Lab, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """The original fleetctl against the lab in peer mode (API driver, node 1)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL_")}
    return run([str(peer_dir() / "fleetctl"), f"--endpoint={peer_endpoint(lab)}", *args],
               env=env, check=check, timeout=timeout)
