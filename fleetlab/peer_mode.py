"""A lab of the ORIGINAL fleet v1.0.0 (Go), as a peer to compare the project with.

`PeerLab` is a `Lab` whose nodes run the original `fleetd` instead of ours: etcd members with
the v2 API (`ETCD_ENABLE_V2=true`, the original fleetd speaks etcd v2 only), the peer binaries
copied into each node's root (`/opt/fleet-peer/`, so a checkout below /tmp works too), fleet's
`/etc/fleet/fleet.conf` and its API socket from systemd socket activation (`fleet.socket`:
`/var/run/fleet.sock` and `IP:49153`), as fleet's own units did.

    lab = PeerLab("hfpeer", nodes=3, peer_dir=find_peer_dir(repo)).up()
    lab.wait_peer_fleetd()
    lab.node(1).exec("/opt/fleet-peer/fleetctl list-machines")
    lab.down()

`find_peer_dir` looks for the binaries at `../shared/peer/` from the repository root (the
checkout's sibling `shared/`), where the tests expect them (or at `$FLEET_PEER_DIR`); None
when they are absent.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from . import boot
from .config import ETCD_UNIT, NODE_TARGET
from .lab import Lab
from .state import NodeState

PEER_BIN_DIR = "/opt/fleet-peer"
PEER_FLEETD = f"{PEER_BIN_DIR}/fleetd"
PEER_FLEETCTL = f"{PEER_BIN_DIR}/fleetctl"
PEER_API_PORT = 49153
PEER_SOCKET = "/var/run/fleet.sock"


def find_peer_dir(repo_root: Path) -> Path | None:
    """`<repo>/../shared/peer` if it holds both binaries, else None. `$FLEET_PEER_DIR`, if set,
    is used instead (a checkout that is not beside shared/, e.g. a git worktree)."""
    override = os.environ.get("FLEET_PEER_DIR")
    peer = Path(override) if override else Path(repo_root).resolve().parent / "shared" / "peer"
    if (peer / "fleetd").is_file() and (peer / "fleetctl").is_file():
        return peer
    return None


def render_peer_fleet_conf(etcd_servers: list[str], public_ip: str, metadata: dict[str, str],
                           agent_ttl: str) -> str:
    meta = ",".join(f"{k}={v}" for k, v in metadata.items())
    servers = ",".join(f'"{s}"' for s in etcd_servers)
    return (
        "# written by fleet-lab (peer mode: the original fleet v1.0.0)\n"
        f"etcd_servers=[{servers}]\n"
        f"public_ip={public_ip}\n"
        f'metadata="{meta}"\n'
        f"agent_ttl={agent_ttl}\n"
    )


def render_peer_socket(ip: str) -> str:
    return (
        "[Unit]\n"
        "Description=fleet API socket (original fleet v1.0.0)\n"
        "\n[Socket]\n"
        f"ListenStream={PEER_SOCKET}\n"
        f"ListenStream={ip}:{PEER_API_PORT}\n"
        "Service=fleet.service\n"
    )


def render_peer_service(etcd_local: bool) -> str:
    after = f"After=fleet.socket {ETCD_UNIT}\n" if etcd_local else "After=fleet.socket\n"
    return (
        "[Unit]\n"
        "Description=fleet daemon (original fleet v1.0.0)\n"
        "Requires=fleet.socket\n"
        f"{after}"
        "\n[Service]\n"
        f"ExecStart={PEER_FLEETD}\n"
        "Restart=always\n"
        "RestartSec=1\n"
    )


ETCD_V2_DROPIN = "[Service]\nEnvironment=ETCD_ENABLE_V2=true\n"


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
            f"{unit_dir}/fleet.service": render_peer_service(node.etcd_member),
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
        import shlex

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


__all__ = ["PeerLab", "find_peer_dir", "PEER_FLEETCTL", "PEER_FLEETD", "PEER_API_PORT", "PEER_SOCKET"]
