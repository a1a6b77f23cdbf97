"""Texts the lab writes into a node's root: the boot target, the etcd and fleetd units, fleet.conf."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from fleetd.errors import LabError

NODE_TARGET = "fleetlab-node.target"
ETCD_UNIT = "fleetlab-etcd.service"
FLEETD_UNIT = "fleetd.service"
FLEET_CONF = "/etc/fleet/fleet.conf"
LAB_API_PORT = 54728
ETCD_DATA_DIR = "/var/lib/fleetlab/etcd"
DEFAULT_KEY_PREFIX = "/_coreos.com/fleet/"
DEFAULT_AGENT_TTL = "5s"
# a node's own certificate and the cluster CA, written into its root by `up` (fleetd.pki)
NODE_PKI_DIR = "/etc/fleet/pki"
NODE_CA = f"{NODE_PKI_DIR}/ca.pem"
NODE_CERT = f"{NODE_PKI_DIR}/machine.pem"
NODE_KEY = f"{NODE_PKI_DIR}/machine.key"

_DURATION_RE = re.compile(r"\d+(\.\d+)?(ms|s|m|h)")
_META_KEY_RE = re.compile(r"[A-Za-z0-9_.-]+")


def check_agent_ttl(value: str) -> str:
    if not _DURATION_RE.fullmatch(value):
        raise LabError(f"agent_ttl {value!r}: expected a duration such as 3s, 500ms or 1m")
    return value


def check_metadata(meta: Mapping[str, str]) -> dict[str, str]:
    for key, value in meta.items():
        if not _META_KEY_RE.fullmatch(key):
            raise LabError(f"metadata key {key!r}: must match [A-Za-z0-9_.-]+")
        if not value or any(c in value for c in ',="') or value != value.strip():
            raise LabError(f"metadata {key}={value!r}: value must be non-empty, without , = \" or edge spaces")
    return dict(meta)


def parse_metadata_specs(specs: Sequence[str], nodes: int) -> dict[int, dict[str, str]]:
    """Parse CLI `--metadata` values: `k=v[,k=v]` for every node, `N:k=v[,k=v]` for node N only."""
    result: dict[int, dict[str, str]] = {}
    for spec in specs:
        target, sep, pairs = spec.partition(":")
        if not sep:
            target, pairs = "", spec
        if target and not (target.isdigit() and 1 <= int(target) <= nodes):
            raise LabError(f"--metadata {spec!r}: node number must be 1..{nodes}")
        meta = {}
        for pair in pairs.split(","):
            key, eq, value = pair.strip().partition("=")
            if not eq:
                raise LabError(f"--metadata {spec!r}: {pair!r} is not key=value")
            meta[key] = value
        check_metadata(meta)
        for index in [int(target)] if target else range(1, nodes + 1):
            result.setdefault(index, {}).update(meta)
    return result


def render_target() -> str:
    """The node's boot target: basic system and D-Bus, plus what the lab wants in the node.

    No default dependencies, so that the target is not ordered after what it wants: a fleetd
    that hangs in start-up does not hold the target back.
    """
    return (
        "[Unit]\n"
        "Description=fleetlab node (basic system, D-Bus, and what the lab runs)\n"
        "DefaultDependencies=no\n"
        "Requires=basic.target dbus.socket\n"
        "After=basic.target dbus.socket\n"
        "Conflicts=shutdown.target\n"
        "Before=shutdown.target\n"
        "AllowIsolate=yes\n"
    )


@dataclass(frozen=True)
class EtcdMember:
    name: str
    ip: str
    tls: bool = False  # client and peer URLs over TLS with client certificates (the default lab)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.ip}:2379"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{self.ip}:2380"


def etcd_tls_args() -> list[str]:
    """etcd's TLS flags: the node's certificate on client and peer URLs, and a certificate signed
    by the cluster CA required from every client and peer (etcd then takes a client's user name
    from the certificate's CN once `auth enable` ran)."""
    return [
        f"--trusted-ca-file={NODE_CA}", f"--cert-file={NODE_CERT}", f"--key-file={NODE_KEY}",
        "--client-cert-auth",
        f"--peer-trusted-ca-file={NODE_CA}", f"--peer-cert-file={NODE_CERT}", f"--peer-key-file={NODE_KEY}",
        "--peer-client-cert-auth",
    ]


def render_etcd_unit(member: EtcdMember, cluster: Sequence[EtcdMember], token: str) -> str:
    initial = ",".join(f"{m.name}={m.peer_url}" for m in cluster)
    args = [
        "/usr/bin/etcd",
        f"--name={member.name}",
        f"--data-dir={ETCD_DATA_DIR}",
        f"--listen-client-urls={member.client_url},{member.scheme}://127.0.0.1:2379",
        f"--advertise-client-urls={member.client_url}",
        f"--listen-peer-urls={member.peer_url}",
        f"--initial-advertise-peer-urls={member.peer_url}",
        f"--initial-cluster={initial}",
        f"--initial-cluster-token={token}",
        "--initial-cluster-state=new",
        # A member cut off for a while must not depose the leader when it comes back (etcd 3.4
        # defaults to false, 3.5 to true): without pre-vote it campaigns at ever higher terms
        # while cut off, and on its return the cluster has no leader for 1-2 s, longer than
        # what is left of the machine leases of the agents that were cut off with it.
        "--pre-vote=true",
        "--logger=zap",
        *(etcd_tls_args() if member.tls else []),
    ]
    return (
        "[Unit]\n"
        f"Description=etcd member {member.name} (fleetlab)\n"
        "\n[Service]\n"
        "Type=notify\n"
        f"ExecStart={' '.join(args)}\n"
        "Restart=always\n"
        "RestartSec=1\n"
        "LimitNOFILE=65536\n"
    )


@dataclass(frozen=True)
class FleetConf:
    etcd_servers: tuple[str, ...]
    public_ip: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    agent_ttl: str = DEFAULT_AGENT_TTL
    engine_reconcile_interval: int = 1
    etcd_key_prefix: str = DEFAULT_KEY_PREFIX
    api_port: int = LAB_API_PORT
    tls: bool = False
    api_socket_group: str = ""  # a group that may use the API's unix socket (the Vagrant lab: fleet)

    def render(self) -> str:
        meta = ",".join(f"{k}={v}" for k, v in self.metadata.items())
        if self.tls:
            # etcd as the user named by this node's certificate; the API (and the image server,
            # and status/journal relays to other nodes) with client certificates of the cluster CA
            security = (
                f"etcd_cafile={NODE_CA}\netcd_certfile={NODE_CERT}\netcd_keyfile={NODE_KEY}\n"
                f"api_tcp={self.public_ip}:{self.api_port}\n"
                f"api_cafile={NODE_CA}\napi_certfile={NODE_CERT}\napi_keyfile={NODE_KEY}\n"
            )
        else:
            # fleet-lab up --insecure: the API on the lab's private bridge without TLS (fleet's
            # functional tests used 54728): whoever reaches the bridge controls the lab
            security = f"api_tcp={self.public_ip}:{self.api_port}\napi_insecure_tcp=true\n"
        return (
            "# written by fleet-lab\n"
            f"etcd_servers={','.join(self.etcd_servers)}\n"
            f"etcd_key_prefix={self.etcd_key_prefix}\n"
            f"public_ip={self.public_ip}\n"
            f'metadata="{meta}"\n'
            f'agent_ttl="{self.agent_ttl}"\n'
            f"engine_reconcile_interval={self.engine_reconcile_interval}\n"
            + security
            # service discovery's DNS on the node's address (docs/discovery.md)
            + f"dns_listen={self.public_ip}:53\n"
            + (f"api_socket_group={self.api_socket_group}\n" if self.api_socket_group else "")
        )


def fleetd_exec_start(checkout: Path) -> str:
    return f"{checkout}/.venv/bin/fleetd --config {FLEET_CONF}"


def builtin_fleetd_unit() -> str:
    return (
        "[Unit]\n"
        "Description=fleet daemon\n"
        "After=network.target\n"
        "\n[Service]\n"
        "Type=notify\n"
        "ExecStart=fleetd\n"
        "Restart=always\n"
        "RestartSec=1\n"
        "\n[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def render_fleetd_unit(checkout: Path, template: str | None, etcd_local: bool) -> str:
    """The repository's units/fleetd.service (or a built-in one) with ExecStart aimed at the checkout.

    Every ExecStart= of the template's [Service] section is replaced by one line running
    `<checkout>/.venv/bin/fleetd --config /etc/fleet/fleet.conf`. On a node that runs an etcd
    member, fleetd is ordered after it.
    """
    text = template if template is not None else builtin_fleetd_unit()
    out: list[str] = []
    section = ""
    placed = False
    continued = False
    for line in text.splitlines():
        stripped = line.strip()
        if continued:  # continuation lines of a replaced ExecStart=
            continued = stripped.endswith("\\")
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped
            out.append(line)
            if section == "[Unit]" and etcd_local:
                out.append(f"After={ETCD_UNIT}")
            continue
        if section == "[Service]" and re.match(r"ExecStart\s*=", stripped):
            if not placed:
                out.append(f"ExecStart={fleetd_exec_start(checkout)}")
                placed = True
            continued = stripped.endswith("\\")
            continue
        out.append(line)
    if not placed:
        raise LabError("units/fleetd.service: no ExecStart= in its [Service] section")
    return "\n".join(out) + "\n"


def render_hosts(nodes: Mapping[str, str]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{ip}\t{name}" for name, ip in nodes.items()]
    return "\n".join(lines) + "\n"
