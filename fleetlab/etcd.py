"""Talking to the lab's etcd cluster from the host with etcdctl (API v3)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Sequence

from fleetd.errors import LabError

from .sysutil import run


def member_count(nodes: int) -> int:
    """How many etcd members a lab of `nodes` nodes runs, on its first nodes: three, or one on
    node 1 when the lab has fewer than three nodes."""
    return 3 if nodes >= 3 else 1


def etcdctl(endpoints: Sequence[str], *args: str, timeout: float = 20.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("etcdctl")
    if exe is None:
        raise LabError("etcdctl not found (Debian package etcd-client)")
    # etcdctl refuses a flag together with its ETCDCTL_* variable (as left by `eval "$(fleet-lab
    # env)"`): the lab's explicit endpoints win, the caller's etcdctl settings are dropped
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    cmd = [exe, f"--endpoints={','.join(endpoints)}", "--dial-timeout=2s", "--command-timeout=5s", *args]
    return run(cmd, env=env, timeout=timeout, check=check)


def endpoint_health(endpoints: Sequence[str]) -> dict[str, bool]:
    """Health of each endpoint (`etcdctl endpoint health`); unreachable ones are False."""
    proc = etcdctl(endpoints, "endpoint", "health", "-w", "json", check=False)
    health = {ep: False for ep in endpoints}
    try:
        for entry in json.loads(proc.stdout or "[]"):
            health[entry["endpoint"]] = bool(entry.get("health"))
    except (ValueError, KeyError, TypeError):
        pass
    return health


def registered_machines(endpoints: Sequence[str], key_prefix: str) -> set[str]:
    """IDs of machines with a live `<prefix>machines/<id>/object` key (it expires with agent_ttl)."""
    base = key_prefix.rstrip("/") + "/machines/"
    proc = etcdctl(endpoints, "get", "--prefix", "--keys-only", base)
    ids = set()
    for key in proc.stdout.split():
        rest = key[len(base) :] if key.startswith(base) else ""
        machine, _, leaf = rest.partition("/")
        if machine and leaf == "object":
            ids.add(machine)
    return ids
