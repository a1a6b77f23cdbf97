"""The registry: everything fleet keeps in etcd. The only package that talks to etcd.

`Registry` composes the stores (fleetd/registry/stores.py: their Protocols) over one
`RegistryCore` (fleetd/registry/core.py); fleetd/registry/memory.py holds the in-memory
implementation for fast tests.
"""

from fleetd.registry.connection import RequestCounter
from fleetd.registry.core import RegistryCore, WatchCompacted, WatchEvent
from fleetd.registry.keys import KeyLayout
from fleetd.registry.registry import Registry
from fleetd.registry.stores import MachineView, NotLeader, UnitRecord

__all__ = ["KeyLayout", "MachineView", "NotLeader", "Registry", "RegistryCore", "RequestCounter", "UnitRecord",
           "WatchCompacted", "WatchEvent"]
