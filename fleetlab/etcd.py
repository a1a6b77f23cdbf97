"""Talking to the lab's etcd cluster from the host with etcdctl (API v3)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Sequence

from fleetd.errors import LabError

from .sysutil import run


def member_count(nodes: int) -> int:
    """How many etcd members a lab of `nodes` nodes runs, on its first nodes: three, or one on
    node 1 when the lab has fewer than three nodes."""
    return 3 if nodes >= 3 else 1


@dataclass(frozen=True)
class EtcdTLS:
    """etcdctl's client TLS files: the cluster CA and a client certificate (its CN is the etcd
    user name, etcd's --client-cert-auth)."""

    ca: str
    cert: str
    key: str

    def args(self) -> list[str]:
        return [f"--cacert={self.ca}", f"--cert={self.cert}", f"--key={self.key}"]


#: the role fleetd and the lab's operators get: read and write below the key prefix, nothing else
FLEET_ROLE = "fleet"
#: read-only below the key prefix
FLEET_READ_ROLE = "fleet-read"


def etcdctl(endpoints: Sequence[str], *args: str, timeout: float = 20.0, check: bool = True,
            tls: EtcdTLS | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("etcdctl")
    if exe is None:
        raise LabError("etcdctl not found (Debian package etcd-client)")
    # etcdctl refuses a flag together with its ETCDCTL_* variable (as left by `eval "$(fleet-lab
    # env)"`): the lab's explicit endpoints win, the caller's etcdctl settings are dropped
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    cmd = [exe, f"--endpoints={','.join(endpoints)}", "--dial-timeout=2s", "--command-timeout=5s",
           *(tls.args() if tls else []), *args]
    return run(cmd, env=env, timeout=timeout, check=check)


def endpoint_health(endpoints: Sequence[str], tls: EtcdTLS | None = None) -> dict[str, bool]:
    """Health of each endpoint (`etcdctl endpoint health`); unreachable ones are False."""
    proc = etcdctl(endpoints, "endpoint", "health", "-w", "json", check=False, tls=tls)
    health = {ep: False for ep in endpoints}
    try:
        for entry in json.loads(proc.stdout or "[]"):
            health[entry["endpoint"]] = bool(entry.get("health"))
    except (ValueError, KeyError, TypeError):
        pass
    return health


def enable_rbac(endpoints: Sequence[str], tls: EtcdTLS, key_prefix: str, writers: Sequence[str],
                readers: Sequence[str] = (), extra_prefixes: Sequence[str] = ()) -> None:
    """Turn on etcd's authentication with certificate-named users and no passwords at all.

    `root` (role root; the lab's own etcdctl uses a certificate with CN=root) and, limited to
    `key_prefix` (and `extra_prefixes`: service discovery's SkyDNS keys), role `fleet` (readwrite)
    for `writers` and `fleet-read` (read) for `readers`.
    Users have no password (`--no-password`): etcd takes the user name from the client
    certificate's CN, so there is no etcd secret to leak besides the keys themselves.
    Idempotent: what exists already is kept.
    """
    def ctl(*args: str) -> None:
        proc = etcdctl(endpoints, *args, tls=tls, check=False)
        if proc.returncode != 0 and "already exists" not in (proc.stderr + proc.stdout) \
                and "already enabled" not in (proc.stderr + proc.stdout):
            why = ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1]
            raise LabError(f"etcdctl {' '.join(args)}: exit {proc.returncode}: {why}")

    ctl("role", "add", FLEET_ROLE)
    ctl("role", "add", FLEET_READ_ROLE)
    for prefix in (key_prefix, *extra_prefixes):
        ctl("role", "grant-permission", FLEET_ROLE, "--prefix=true", "readwrite", prefix)
        ctl("role", "grant-permission", FLEET_READ_ROLE, "--prefix=true", "read", prefix)
    for user, role in [("root", "root"), *((w, FLEET_ROLE) for w in writers),
                       *((r, FLEET_READ_ROLE) for r in readers)]:
        ctl("user", "add", user, "--no-password")
        ctl("user", "grant-role", user, role)
    ctl("auth", "enable")
