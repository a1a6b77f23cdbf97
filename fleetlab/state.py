"""The persisted state of a lab: one JSON file in the lab's state dir.

It is written before the lab creates anything on the host and again whenever a node's processes
change, so any later command (and `down`, even after a crashed `up`) finds the lab's objects.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fleetd.errors import LabError

from .sysutil import ProcRef

STATE_VERSION = 1


@dataclass
class NodeState:
    name: str
    index: int
    ip: str
    machine_id: str
    netns: str
    veth: str
    root: str
    upper: str
    work: str
    etcd_member: bool
    metadata: dict[str, str] = field(default_factory=dict)
    nspawn: ProcRef | None = None
    init: ProcRef | None = None
    partitioned: bool = False

    def to_json(self) -> dict:
        data = asdict(self)
        data["nspawn"] = self.nspawn.to_json() if self.nspawn else None
        data["init"] = self.init.to_json() if self.init else None
        return data

    @classmethod
    def from_json(cls, data: dict) -> "NodeState":
        data = dict(data)
        data["nspawn"] = ProcRef.from_json(data.get("nspawn"))
        data["init"] = ProcRef.from_json(data.get("init"))
        return cls(**data)


@dataclass
class LabState:
    name: str
    subnet: str
    bridge: str
    host_ip: str
    checkout: str
    etcd_key_prefix: str
    agent_ttl: str
    fleetd: bool
    tmpfs: str
    nodes: list[NodeState] = field(default_factory=list)
    insecure: bool = False  # fleet-lab up --insecure: no TLS, no etcd auth
    version: int = STATE_VERSION

    def to_json(self) -> dict:
        data = asdict(self)
        data["nodes"] = [n.to_json() for n in self.nodes]
        return data

    @classmethod
    def from_json(cls, data: dict) -> "LabState":
        data = dict(data)
        if data.get("version") != STATE_VERSION:
            raise LabError(f"lab {data.get('name')}: state version {data.get('version')} unsupported")
        data["nodes"] = [NodeState.from_json(n) for n in data.get("nodes", [])]
        return cls(**data)

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "LabState":
        try:
            return cls.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise LabError(f"{path}: unreadable lab state ({exc})") from exc
