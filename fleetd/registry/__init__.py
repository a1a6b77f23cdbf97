"""The registry: everything fleet keeps in etcd. The only package that talks to etcd."""

from fleetd.registry.connection import RequestCounter
from fleetd.registry.keys import KeyLayout
from fleetd.registry.registry import MachineView, NotLeader, Registry, UnitRecord, WatchCompacted, WatchEvent

__all__ = ["KeyLayout", "MachineView", "NotLeader", "Registry", "RequestCounter", "UnitRecord", "WatchCompacted", "WatchEvent"]
