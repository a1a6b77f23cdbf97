"""The registry: everything fleet keeps in etcd. The only package that talks to etcd."""

from fleetd.registry.keys import KeyLayout
from fleetd.registry.registry import NotLeader, Registry, WatchCompacted, WatchEvent

__all__ = ["KeyLayout", "NotLeader", "Registry", "WatchCompacted", "WatchEvent"]
