"""Talking to the lab's etcd cluster from the host with etcdctl (API v3)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Sequence

from fleetd.errors import LabError

from .config import EtcdMember
from .sysutil import run


def plan_members(nodes: Sequence[tuple[str, str]]) -> list[EtcdMember]:
    """Members on the first three nodes; a lab of fewer than three nodes runs one, on node 1."""
    count = 3 if len(nodes) >= 3 else 1
    return [EtcdMember(name, ip) for name, ip in nodes[:count]]


def etcdctl(endpoints: Sequence[str], *args: str, timeout: float = 20.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("etcdctl")
    if exe is None:
        raise LabError("etcdctl not found (Debian package etcd-client)")
    env = dict(os.environ, ETCDCTL_API="3")
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


def member_count(endpoints: Sequence[str]) -> int:
    proc = etcdctl(endpoints, "member", "list", "-w", "json")
    return len(json.loads(proc.stdout).get("members", []))


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
