"""The registry: everything fleet keeps in etcd. The only package that talks to etcd.

`Registry` composes the stores (fleetd/registry/stores.py: their Protocols) over one
`RegistryCore` (fleetd/registry/core.py); fleetd/registry/memory.py holds the in-memory
implementation for fast tests. fleetd/registry/gateway.py is the small stdlib-only path to etcd's
JSON gateway that fleetctl's start-up-sensitive fast path uses.

The names below are loaded on first use (module `__getattr__`): importing a light submodule
(keys, records, gateway) must not pull aetcd, gRPC and protobuf (~0.3 s) into a process that
never uses them.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself is not imported here (fleetctl's fast path pays for every import)
if TYPE_CHECKING:  # pragma: no cover
    from fleetd.registry.connection import RequestCounter
    from fleetd.registry.core import RegistryCore, WatchCompacted, WatchEvent
    from fleetd.registry.keys import KeyLayout
    from fleetd.registry.registry import Registry
    from fleetd.registry.stores import MachineView, NotLeader, UnitRecord

_WHERE = {
    "RequestCounter": "fleetd.registry.connection",
    "RegistryCore": "fleetd.registry.core",
    "WatchCompacted": "fleetd.registry.core",
    "WatchEvent": "fleetd.registry.core",
    "KeyLayout": "fleetd.registry.keys",
    "Registry": "fleetd.registry.registry",
    "MachineView": "fleetd.registry.stores",
    "NotLeader": "fleetd.registry.stores",
    "UnitRecord": "fleetd.registry.stores",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(__import__(module, fromlist=[name]), name)
    globals()[name] = value
    return value
