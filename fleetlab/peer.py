"""The original fleet v1.0.0 (Go) in a lab, as a peer to compare the project with: one module
for both ways of getting there.

The binaries are not part of the project: `peer_dir()` finds them at `../shared/peer/` from the
repository root (its README says how they were built) or at $FLEET_PEER_DIR (a checkout that is
not beside shared/, e.g. a git worktree); `peer_problem()` says why they cannot be used (callers
skip with that reason) and `find_peer_dir()` gives the directory only when they can.

Either way a node runs the original fleetd with fleet's config (`render_peer_fleet_conf`: the
lab's etcd servers, the node's IP, metadata and agent_ttl) and its API socket from systemd socket
activation (`/var/run/fleet.sock` and `IP:49153`), as fleet's own units did, with etcd's v2 API
(the original fleetd speaks etcd v2 only):

- `PeerLab` (the conformance tests) is a `Lab` whose nodes are built that way: the binaries
  copied into each node's root (`/opt/fleet-peer/`, so a checkout below /tmp works too),
  `/etc/fleet/fleet.conf`, `fleet.socket` + `fleet.service`, `ETCD_ENABLE_V2=true`;

      lab = PeerLab("hfpeer", nodes=3, peer_dir=find_peer_dir()).up()
      lab.wait_peer_fleetd()
      lab.peer_fleetctl(1, "list-machines")
      lab.down()

- `to_original_fleet(lab)` (fleet-lab bench compare) turns a running lab of the project into
  one: every etcd member gets `--enable-v2` (a drop-in; members restart one at a time, so the
  cluster keeps its quorum and its data); on every node the project's fleetd is stopped and the
  original fleetd runs from the peer directory with `/etc/fleet/peer.conf` and
  `fleet-peer.socket` + `fleet-peer.service` in /run. `peer_fleetctl(lab, *args)` runs the
  original fleetctl against it (API driver, node 1's TCP API); `back_to_project(lab)` stops the
  original fleetd and starts the project's again.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from . import boot
from .config import ETCD_UNIT, NODE_TARGET
from .lab import Lab
from .state import NodeState
from .sysutil import run

PEER_API_PORT = 49153
PEER_SOCKET = "/var/run/fleet.sock"
PEER_BIN_DIR = "/opt/fleet-peer"
PEER_FLEETD = f"{PEER_BIN_DIR}/fleetd"
PEER_FLEETCTL = f"{PEER_BIN_DIR}/fleetctl"
ETCD_V2_DROPIN = "[Service]\nEnvironment=ETCD_ENABLE_V2=true\n"
# to_original_fleet's files on a running node
PEER_CONF = "/etc/fleet/peer.conf"
RUN_SOCKET = "fleet-peer.socket"
RUN_SERVICE = "fleet-peer.service"
ETCD_DROPIN = "/run/systemd/system/fleetlab-etcd.service.d/peer-v2.conf"

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- the binaries

def peer_dir(repo_root: Path | None = None) -> Path:
    """$FLEET_PEER_DIR, else `<repo>/../shared/peer` (whether or not the binaries are there)."""
    env = os.environ.get("FLEET_PEER_DIR")
    if env:
        return Path(env)
    return Path(repo_root or REPO).resolve().parent / "shared" / "peer"


def peer_problem(repo_root: Path | None = None) -> str | None:
    """None if the original fleet's binaries are usable, else why not."""
    where = peer_dir(repo_root)
    for name in ("fleetd", "fleetctl"):
        if not os.access(where / name, os.X_OK):
            return f"the original fleet's {name} is not at {where / name} (see ../shared/peer/README.md)"
    return None


def find_peer_dir(repo_root: Path | None = None) -> Path | None:
    """peer_dir() if it holds both binaries, else None."""
    return None if peer_problem(repo_root) else peer_dir(repo_root)


# ---------------------------------------------------------------------------- fleet's files

def render_peer_fleet_conf(etcd_servers: list[str], public_ip: str, metadata: dict[str, str],
                           agent_ttl: str) -> str:
    meta = ",".join(f"{k}={v}" for k, v in sorted(metadata.items()))
    servers = ",".join(f'"{s}"' for s in etcd_servers)
    return (
        "# written by fleet-lab (peer mode: the original fleet v1.0.0)\n"
        f"etcd_servers=[{servers}]\n"
        f'public_ip="{public_ip}"\n'
        f'metadata="{meta}"\n'
        f'agent_ttl="{agent_ttl}"\n'
    )


def render_peer_socket(ip: str, service: str = "fleet.service") -> str:
    return (
        "[Unit]\n"
        "Description=fleet API socket (original fleet v1.0.0)\n"
        "\n[Socket]\n"
        f"ListenStream={PEER_SOCKET}\n"
        f"ListenStream={ip}:{PEER_API_PORT}\n"
        f"Service={service}\n"
    )


def render_peer_service(exec_start: str = PEER_FLEETD, socket: str = "fleet.socket", after: str = "") -> str:
    return (
        "[Unit]\n"
        "Description=fleet daemon (original fleet v1.0.0)\n"
        f"Requires={socket}\n"
        f"After={' '.join(filter(None, [socket, after]))}\n"
        "\n[Service]\n"
        f"ExecStart={exec_start}\n"
        "Restart=always\n"
        "RestartSec=1\n"
    )


# ---------------------------------------------------------------------------- a lab built as fleet's

class PeerLab(Lab):
    """A lab whose nodes run the original fleetd (see the module's doc)."""

    def __init__(self, name: str, nodes: int = 3, *, peer_dir: Path, **options) -> None:
        options["fleetd"] = False  # our fleetd: not started; the peer's instead
        # fleet v1.0.0 speaks etcd's v2 API without TLS client certificates or RBAC
        options.setdefault("insecure", True)
        super().__init__(name, nodes, **options)
        self.peer_dir = Path(peer_dir)
        for binary in ("fleetd", "fleetctl"):
            if not (self.peer_dir / binary).is_file():
                raise FileNotFoundError(f"{self.peer_dir / binary}: the original fleet's binary is missing")

    @property
    def tolerated_units(self) -> frozenset[str]:
        return frozenset({"fleet.service", "fleet.socket"})

    def _write_node_files(self, node: NodeState) -> None:
        super()._write_node_files(node)
        root = Path(node.root)
        unit_dir = "/etc/systemd/system"
        wants = f"{unit_dir}/{NODE_TARGET}.wants"
        files = {
            "/etc/fleet/fleet.conf": render_peer_fleet_conf(
                self.etcd_endpoints, node.ip, node.metadata, self.agent_ttl),
            f"{unit_dir}/fleet.socket": render_peer_socket(node.ip),
            f"{unit_dir}/fleet.service": render_peer_service(after=ETCD_UNIT if node.etcd_member else ""),
        }
        if node.etcd_member:
            files[f"{unit_dir}/{ETCD_UNIT}.d/enable-v2.conf"] = ETCD_V2_DROPIN
        links = {f"{wants}/fleet.socket": "../fleet.socket", f"{wants}/fleet.service": "../fleet.service"}
        for rel in files:
            (root / rel.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        boot.write_files(root, files, links)
        bin_dir = root / PEER_BIN_DIR.lstrip("/")
        bin_dir.mkdir(parents=True, exist_ok=True)
        for binary in ("fleetd", "fleetctl"):
            shutil.copy2(self.peer_dir / binary, bin_dir / binary)

    def peer_fleetctl(self, node: int, *args: str, cwd: str = "/", check: bool = False,
                      timeout: float = 60.0):
        """The original fleetctl inside node `node` (unix socket endpoint), from `cwd`."""
        cmd = f"cd {shlex.quote(cwd)} && {PEER_FLEETCTL} {shlex.join(args)}"
        return self.node(node).exec(cmd, check=check, timeout=timeout)

    def wait_peer_fleetd(self, timeout: float = 60.0) -> None:
        """Wait until `fleetctl list-machines` on node 1 lists every node."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            proc = self.peer_fleetctl(1, "list-machines", "--no-legend", timeout=15)
            lines = [line for line in proc.stdout.splitlines() if line.strip()]
            if proc.returncode == 0 and len(lines) == self.size:
                return
            last = (proc.stdout + proc.stderr).strip()
            time.sleep(0.5)
        raise TimeoutError(f"peer lab {self.name}: original fleetd not up on all nodes after {timeout:g}s: {last}")


# ---------------------------------------------------------------------------- a running lab turned into fleet's

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
    fleetd = f"{peer_dir() / 'fleetd'} -config {PEER_CONF}"
    for node in lab.nodes:
        node.exec(["systemctl", "stop", "fleetd.service"], check=False, timeout=timeout)
        node.exec(["sh", "-c", "systemctl stop fleetd.socket 2>/dev/null; rm -f /var/run/fleet.sock"], check=False)
        _write(node, PEER_CONF, render_peer_fleet_conf(lab.etcd_endpoints, node.ip,
                                                       node.state.metadata, lab.agent_ttl))
        _write(node, f"/run/systemd/system/{RUN_SOCKET}", render_peer_socket(node.ip, RUN_SERVICE))
        _write(node, f"/run/systemd/system/{RUN_SERVICE}", render_peer_service(fleetd, RUN_SOCKET))
        node.exec(["systemctl", "daemon-reload"])
        node.exec(["systemctl", "start", RUN_SOCKET, RUN_SERVICE], timeout=timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = peer_fleetctl(lab, "list-machines", "--no-legend", check=False)
        if out.returncode == 0 and len(out.stdout.split("\n")) - 1 >= len(lab.nodes):
            return
        time.sleep(0.5)
    raise RuntimeError(f"lab {lab.name}: the original fleetd did not list {len(lab.nodes)} machines in {timeout:g}s")


def back_to_project(lab: Lab, timeout: float = 60.0) -> None:
    for node in lab.nodes:
        node.exec(["systemctl", "stop", RUN_SERVICE, RUN_SOCKET], check=False, timeout=timeout)
        node.exec(["systemctl", "start", "fleetd.service"], check=False, timeout=timeout)


def peer_endpoint(lab: Lab) -> str:
    return f"http://{lab.node(1).ip}:{PEER_API_PORT}"


def peer_fleetctl(lab: Lab, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """The original fleetctl against the lab in peer mode (API driver, node 1)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL_")}
    return run([str(peer_dir() / "fleetctl"), f"--endpoint={peer_endpoint(lab)}", *args],
               env=env, check=check, timeout=timeout)
