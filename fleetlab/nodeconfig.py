"""One node configuration for both labs: the files that make a machine a fleet node.

`node_files` renders a node's etcd member unit, fleetd unit, fleet.conf, /etc/hosts and its TLS
material (from the cluster PKI, fleetd.pki) with the render functions of fleetlab.config; the
nspawn lab (fleetlab.lab) writes them into a node's root and the Vagrant lab's provisioning
writes them into a VM with this module's command line:

    python -m fleetlab.nodeconfig pki --dir DIR --nodes N --subnet S         (on the host)
    python -m fleetlab.nodeconfig write --index I --nodes N --subnet S \\
        --pki-dir DIR --checkout /opt/fleet-py --root /                       (in a VM, as root)

so the two labs cannot drift apart. `issue_certs` issues the certificates both labs use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import click

from fleetd.pki import ROLE_OPERATOR, ROLE_READ_ONLY, ClusterPKI

from .config import (
    DEFAULT_AGENT_TTL,
    DEFAULT_KEY_PREFIX,
    ETCD_UNIT,
    FLEET_CONF,
    FLEETD_UNIT,
    NODE_CA,
    NODE_CERT,
    NODE_KEY,
    EtcdMember,
    FleetConf,
    render_etcd_unit,
    render_fleetd_unit,
    check_agent_ttl,
    render_hosts,
)
from .etcd import member_count

UNIT_DIR = "/etc/systemd/system"
# client certificates issued with the node certificates (names shared with fleetlab.lab)
ROOT_CERT = "root"
OPERATOR_CERT = "admin"
READER_CERT = "viewer"
VM_SOCKET_GROUP = "fleet"  # in a VM: members (the vagrant user) run fleetctl on /var/run/fleet.sock


@dataclass(frozen=True)
class NodeSpec:
    name: str
    ip: str
    etcd_member: bool
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterSpec:
    nodes: tuple[NodeSpec, ...]
    checkout: Path  # where the node finds the project (its .venv/bin/fleetd)
    token: str  # etcd's initial cluster token
    tls: bool = True
    agent_ttl: str = DEFAULT_AGENT_TTL
    etcd_key_prefix: str = DEFAULT_KEY_PREFIX
    wanted_by: str = "multi-user.target"  # the target whose .wants/ starts etcd and fleetd
    fleetd: bool = True
    fleetd_template: str | None = None  # units/fleetd.service of the checkout, if any
    api_socket_group: str = ""  # a group whose members use fleetctl on the node's unix socket

    @property
    def members(self) -> list[EtcdMember]:
        return [EtcdMember(n.name, n.ip, tls=self.tls) for n in self.nodes if n.etcd_member]

    @property
    def etcd_endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)


@dataclass
class NodeFiles:
    files: dict[str, str]  # path in the node -> text
    links: dict[str, str]  # path in the node -> symlink target
    secrets: dict[str, bytes]  # path in the node -> key material (root only, 0600 in a 0700 dir)


def node_files(cluster: ClusterSpec, node: NodeSpec, pki: ClusterPKI | None) -> NodeFiles:
    """The files that make `node` a member of `cluster`: etcd member unit (if it is one), fleetd
    unit and fleet.conf (if the cluster runs fleetd), /etc/hosts, and with TLS the cluster CA,
    the node's certificate and key from `pki` (issued by `issue_certs`)."""
    files = {"/etc/hosts": render_hosts({n.name: n.ip for n in cluster.nodes})}
    links: dict[str, str] = {}
    secrets: dict[str, bytes] = {}
    wants = f"{UNIT_DIR}/{cluster.wanted_by}.wants"
    if node.etcd_member:
        files[f"{UNIT_DIR}/{ETCD_UNIT}"] = render_etcd_unit(
            EtcdMember(node.name, node.ip, tls=cluster.tls), cluster.members, token=cluster.token)
        links[f"{wants}/{ETCD_UNIT}"] = f"../{ETCD_UNIT}"
    if cluster.fleetd:
        files[f"{UNIT_DIR}/{FLEETD_UNIT}"] = render_fleetd_unit(
            cluster.checkout, cluster.fleetd_template, etcd_local=node.etcd_member)
        files[FLEET_CONF] = FleetConf(
            etcd_servers=tuple(cluster.etcd_endpoints),
            public_ip=node.ip,
            metadata=node.metadata,
            agent_ttl=cluster.agent_ttl,
            etcd_key_prefix=cluster.etcd_key_prefix,
            tls=cluster.tls,
            api_socket_group=cluster.api_socket_group,
        ).render()
        links[f"{wants}/{FLEETD_UNIT}"] = f"../{FLEETD_UNIT}"
    if cluster.tls:
        if pki is None:
            raise ValueError("a TLS cluster needs its PKI")
        issued = pki.paths(node.name)
        files[NODE_CA] = issued.ca.read_text()
        files[NODE_CERT] = issued.cert.read_text()
        secrets[NODE_KEY] = issued.key.read_bytes()
    return NodeFiles(files, links, secrets)


def issue_certs(pki: ClusterPKI, cluster: ClusterSpec, ca_name: str, force: bool = False) -> None:
    """The cluster CA (kept if it exists), a machine certificate per node and the client
    certificates root, admin (operators) and reader (read-only)."""
    pki.init(ca_name)
    members = [n.ip for n in cluster.nodes if n.etcd_member]
    for node in cluster.nodes:
        if pki.paths(node.name).cert.exists() and not force:
            continue
        # fleetd's gRPC channel to several etcd members checks every member's certificate
        # against one name (the first endpoint's address), so an etcd member's certificate
        # names all members' addresses. That gives a member nothing it lacks: as a raft
        # peer it already reads and writes everything.
        ips = [node.ip] + ([ip for ip in members if ip != node.ip] if node.etcd_member else [])
        pki.machine(node.name, ips + ["127.0.0.1"], [node.name, "localhost"], force=force)
    for name, role in ((ROOT_CERT, ROLE_OPERATOR), (OPERATOR_CERT, ROLE_OPERATOR), (READER_CERT, ROLE_READ_ONLY)):
        if force or not pki.paths(name).cert.exists():
            pki.client(name, role, force=force)


def write_node_files(root: Path, out: NodeFiles) -> None:
    """Write `out` below `root` (the node's /): texts, symlinks, and keys (0600, directory 0700)."""
    for rel, text in out.files.items():
        path = root / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            path.unlink()
        path.write_text(text)
    for rel, target in out.links.items():
        path = root / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(target)
    for rel, data in out.secrets.items():
        path = root / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)


# --- the Vagrant lab ------------------------------------------------------------------

def vm_name(index: int) -> str:
    return f"fleet-{index:02d}"


def vm_ip(subnet: str, index: int) -> str:
    return f"{subnet}.{100 + index}"


def vagrant_cluster(nodes: int, subnet: str, checkout: Path, tls: bool = True,
                    fleetd_template: str | None = None, agent_ttl: str = DEFAULT_AGENT_TTL) -> ClusterSpec:
    """The Vagrant lab: VMs fleet-01..NN at SUBNET.101.., etcd members on the first min(N, 3)
    (as the nspawn lab, fleetlab.etcd.member_count)."""
    members = member_count(nodes)
    specs = tuple(
        NodeSpec(vm_name(i), vm_ip(subnet, i), etcd_member=i <= members,
                 metadata={"hostname": vm_name(i), "vm": "vagrant"})
        for i in range(1, nodes + 1)
    )
    return ClusterSpec(specs, checkout=checkout, token=f"fleet-vagrant-{subnet}", tls=tls,
                       fleetd_template=fleetd_template, api_socket_group=VM_SOCKET_GROUP,
                       agent_ttl=agent_ttl)


def _template(checkout: Path) -> str | None:
    path = checkout / "units" / FLEETD_UNIT
    return path.read_text() if path.is_file() else None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Render a fleet node's configuration (the one both labs use)."""


@main.command()
@click.option("--dir", "pki_dir", type=click.Path(path_type=Path), required=True, help="The cluster PKI directory.")
@click.option("--nodes", type=click.IntRange(1, 9), required=True)
@click.option("--subnet", required=True, help="The first three octets, e.g. 172.17.8.")
def pki(pki_dir: Path, nodes: int, subnet: str) -> None:
    """Make the Vagrant lab's cluster CA and certificates on the host (idempotent)."""
    issue_certs(ClusterPKI(pki_dir), vagrant_cluster(nodes, subnet, Path("/opt/fleet-py")), "fleet vagrant CA")
    click.echo(str(pki_dir))


@main.command()
@click.option("--index", type=click.IntRange(1, 9), required=True, help="This VM's number (fleet-NN).")
@click.option("--nodes", type=click.IntRange(1, 9), required=True)
@click.option("--subnet", required=True)
@click.option("--checkout", type=click.Path(path_type=Path), default=Path("/opt/fleet-py"), show_default=True)
@click.option("--pki-dir", type=click.Path(path_type=Path), default=None,
              help="Holds ca.pem and this VM's fleet-NN.pem/.key (omit for --insecure).")
@click.option("--insecure", is_flag=True, help="No TLS: etcd and the API in the clear on the private network.")
@click.option("--agent-ttl", default=DEFAULT_AGENT_TTL, show_default=True, help="fleetd's agent_ttl.")
@click.option("--root", type=click.Path(path_type=Path), default=Path("/"), show_default=True)
def write(index: int, nodes: int, subnet: str, checkout: Path, pki_dir: Path | None, insecure: bool,
          agent_ttl: str, root: Path) -> None:
    """Write one VM's node configuration below ROOT (its etcd member and fleetd units are
    linked into multi-user.target.wants; start them with `systemctl start --no-block`)."""
    if index > nodes:
        raise click.BadParameter(f"{index} > --nodes {nodes}", param_hint="--index")
    if not insecure and pki_dir is None:
        raise click.BadParameter("needed unless --insecure", param_hint="--pki-dir")
    cluster = vagrant_cluster(nodes, subnet, checkout, tls=not insecure, fleetd_template=_template(checkout),
                              agent_ttl=check_agent_ttl(agent_ttl))
    node = cluster.node(vm_name(index))
    out = node_files(cluster, node, None if insecure else ClusterPKI(pki_dir))
    write_node_files(root, out)
    for rel in sorted([*out.files, *out.links, *out.secrets]):
        click.echo(rel)


if __name__ == "__main__":
    main()
