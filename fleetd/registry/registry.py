"""The registry: the cluster's state in etcd v3. The only package that issues etcd requests.

`Registry` is a thin facade over peers on one public core (fleetd/registry/core.py): the
stores `units`, `machines` (with leases), `schedule`, `leadership`, `states` and the
cross-store reads `views` (snapshot, machine_view, unit_records), each behind a Protocol in
fleetd/registry/stores.py. It keeps the flat method names (`registry.get_unit(...)`) that
callers use; new code may take the one store it needs. Layout: fleetd/registry/keys.py and
docs/registry.md. Writes that can race are compare-and-swap (`RegistryCore.cas_update`);
batches stay under etcd's 128 operations per transaction.
"""

from __future__ import annotations

from typing import Any, Callable

from fleetd.config import EtcdSettings
from fleetd.registry.connection import Connection, RequestCounter
from fleetd.registry.core import MAX_TXN_OPS, PIPELINE_DEPTH, RegistryCore, WatchCompacted, WatchEvent
from fleetd.registry.leadership import EtcdLeadershipStore
from fleetd.registry.machines import EtcdMachineStore
from fleetd.registry.schedule import EtcdScheduleStore
from fleetd.registry.states import EtcdStateStore
from fleetd.registry.stores import MachineView, NotLeader, UnitRecord
from fleetd.registry.units import BodyCache, EtcdUnitStore
from fleetd.registry.views import EtcdClusterViews

__all__ = ["MAX_TXN_OPS", "PIPELINE_DEPTH", "MachineView", "NotLeader", "Registry", "UnitRecord",
           "WatchCompacted", "WatchEvent"]


def _delegate(store: str, name: str) -> Callable[..., Any]:
    def method(self: "Registry", *args: Any, **kwargs: Any) -> Any:
        return getattr(getattr(self, store), name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"`Registry.{store}.{name}`."
    return method


class Registry:
    """The stores over one etcd connection (see the module's docstring)."""

    def __init__(self, connection: Connection):
        self.core = RegistryCore(connection)
        self.keys = self.core.keys
        bodies = BodyCache(self.core)
        self.units = EtcdUnitStore(self.core, bodies)
        self.machines = EtcdMachineStore(self.core)
        self.schedule = EtcdScheduleStore(self.core)
        self.leadership = EtcdLeadershipStore(self.core)
        self.states = EtcdStateStore(self.core)
        self.views = EtcdClusterViews(self.core, bodies, self.schedule)

    @classmethod
    async def connect(cls, settings: EtcdSettings, *, counter: RequestCounter | None = None) -> "Registry":
        """Open a registry; `counter` (optional) counts its etcd requests and bytes."""
        return cls(await Connection(settings, counter).open())

    async def close(self) -> None:
        await self.core.close()

    async def __aenter__(self) -> "Registry":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def settings(self) -> EtcdSettings:
        return self.core.settings

    @property
    def connection(self) -> Connection:
        return self.core.connection

    set_call_observer = _delegate("core", "set_call_observer")
    current_revision = _delegate("core", "current_revision")
    watch = _delegate("core", "watch")
    watch_batches = _delegate("core", "watch_batches")

    bodies = _delegate("units", "bodies")
    offer_body = _delegate("units", "offer_body")
    jobs_written_after = _delegate("units", "jobs_written_after")
    get_unit = _delegate("units", "get_unit")
    list_units = _delegate("units", "list_units")
    create_unit = _delegate("units", "create_unit")
    create_units = _delegate("units", "create_units")
    replace_unit = _delegate("units", "replace_unit")
    set_desired_state = _delegate("units", "set_desired_state")
    destroy_units = _delegate("units", "destroy_units")

    list_machines = _delegate("machines", "list_machines")
    get_machine = _delegate("machines", "get_machine")
    set_machine_metadata = _delegate("machines", "set_machine_metadata")
    set_draining = _delegate("machines", "set_draining")
    register_machine = _delegate("machines", "register_machine")
    update_machine = _delegate("machines", "update_machine")
    grant_lease = _delegate("machines", "grant_lease")
    keepalive = _delegate("machines", "keepalive")
    keepalive_direct = _delegate("machines", "keepalive_direct")
    revoke_lease = _delegate("machines", "revoke_lease")
    machine_leases = _delegate("machines", "machine_leases")

    placements = _delegate("schedule", "placements")
    global_targets = _delegate("schedule", "global_targets")
    apply_schedule = _delegate("schedule", "apply_schedule")

    campaign = _delegate("leadership", "campaign")
    leader = _delegate("leadership", "leader")
    leader_lease = _delegate("leadership", "leader_lease")
    resign = _delegate("leadership", "resign")

    publish_states = _delegate("states", "publish_states")
    delete_states = _delegate("states", "delete_states")
    unit_states = _delegate("states", "unit_states")

    snapshot = _delegate("views", "snapshot")
    machine_view = _delegate("views", "machine_view")
    target_hashes = _delegate("views", "target_hashes")
    unit_records = _delegate("views", "unit_records")
