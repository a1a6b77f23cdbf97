"""Every use of aetcd's private members, in one place (aetcd is pinned to 1.0.x in pyproject.toml).

aetcd has no public API for what the registry needs: switching to another endpoint's channel
after a failure (fleetd/registry/connection.py `Connection.failover`), a transaction that also
returns the revision it was served at (`Connection.txn`), a side channel with the shared
channel's options and credentials, and a connect that authenticates on our counted channel.
`AetcdClientBase` wraps those internals in public methods; nothing else in the project touches
an aetcd name that starts with "_". tests/unit/test_aetcd_compat.py fails loudly when an aetcd
upgrade renames or removes any of `AETCD_INTERNALS`.
"""

from __future__ import annotations

from typing import Any, Sequence

import aetcd
from aetcd import rpc, watcher

#: The aetcd minor version these internals were read from and tested with.
AETCD_TESTED_VERSION = "1.0"

#: (kind, name): instance attributes set by aetcd.Client.__init__, methods of aetcd.Client.
AETCD_INTERNALS = (
    ("attribute", "_username"),
    ("attribute", "_password"),
    ("attribute", "_timeout"),
    ("attribute", "_options"),
    ("attribute", "_connected"),
    ("attribute", "_watcher"),
    ("method", "_init_channel_attrs"),
    ("method", "_ops_to_requests"),
)


class AetcdClientBase(aetcd.Client):
    """aetcd.Client with its internals behind public names (see the module's docstring)."""

    @property
    def request_timeout(self) -> float | None:
        return self._timeout

    @property
    def channel_options(self) -> list[tuple[str, Any]]:
        return list(self._options.items())

    @property
    def credentials_user(self) -> tuple[str | None, str | None]:
        """(username, password) for etcd's auth, (None, None) without auth."""
        return self._username, self._password

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    @property
    def current_watcher(self) -> Any:
        return self._watcher

    def install_stubs(self, stubs: Any) -> None:
        """Use `stubs` (a channel, or one that counts requests) for every service, watches
        included, and mark the client connected."""
        self.kvstub = rpc.KVStub(stubs)
        self.clusterstub = rpc.ClusterStub(stubs)
        self.leasestub = rpc.LeaseStub(stubs)
        self.maintenancestub = rpc.MaintenanceStub(stubs)
        self.watchstub = rpc.WatchStub(stubs)  # the registry's own watch streams (Connection.watch)
        self._watcher = watcher.Watcher(rpc.WatchStub(stubs), timeout=None, metadata=self.metadata)
        self._connected.set()

    def drop_channel(self) -> None:
        """Forget the current channel and its stubs: the next call connects again."""
        self._init_channel_attrs()
        self._connected.clear()

    def ops_to_requests(self, ops: Sequence[Any]) -> list[Any]:
        """aetcd transaction operations as etcd RequestOp messages."""
        return self._ops_to_requests(ops)
