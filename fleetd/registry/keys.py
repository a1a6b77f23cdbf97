"""The etcd key layout (documented in docs/registry.md). Every key is below one prefix."""

from __future__ import annotations


class KeyLayout:
    """The keys of one registry, below `prefix` (always ends with "/"). A plain class, not a
    dataclass: fleetctl's etcd fast path (fleetd/registry/gateway.py) imports it at start-up."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str):
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"KeyLayout(prefix={self.prefix!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyLayout) and other.prefix == self.prefix

    def __hash__(self) -> int:
        return hash(("KeyLayout", self.prefix))

    # unit bodies, content-addressed: value = canonical unit text
    @property
    def bodies(self) -> str:
        return f"{self.prefix}unit/"

    def body(self, unit_hash: str) -> str:
        return f"{self.bodies}{unit_hash}"

    # one key per unit: value = {"name","hash","desiredState"}
    @property
    def jobs(self) -> str:
        return f"{self.prefix}job/"

    def job(self, name: str) -> str:
        return f"{self.jobs}{name}"

    # the schedule, keyed per machine (owned by the engine leader): value = {"hash","desiredState"}
    @property
    def schedule(self) -> str:
        return f"{self.prefix}schedule/"

    def machine_schedule(self, machine_id: str) -> str:
        return f"{self.schedule}{machine_id}/"

    def placement(self, machine_id: str, name: str) -> str:
        return f"{self.schedule}{machine_id}/{name}"

    # global units mirrored by the engine for agents: value = {"hash","desiredState"}
    @property
    def globals(self) -> str:
        return f"{self.prefix}global/"

    def global_unit(self, name: str) -> str:
        return f"{self.globals}{name}"

    # machines: presence record under the machine's lease, plus lease-less dynamic state
    @property
    def machines(self) -> str:
        return f"{self.prefix}machines/"

    def machine_dir(self, machine_id: str) -> str:
        return f"{self.machines}{machine_id}/"

    def machine_object(self, machine_id: str) -> str:
        return f"{self.machines}{machine_id}/object"

    def machine_metadata(self, machine_id: str, key: str = "") -> str:
        return f"{self.machines}{machine_id}/metadata/{key}"

    def machine_draining(self, machine_id: str) -> str:
        return f"{self.machines}{machine_id}/draining"

    # images each machine holds (and its image server), under the machine's lease
    @property
    def images(self) -> str:
        return f"{self.prefix}images/"

    def machine_images(self, machine_id: str) -> str:
        return f"{self.images}{machine_id}"

    # image imports asked of a machine (fleetctl image import), answered by its agent
    def image_imports(self, machine_id: str) -> str:
        return f"{self.machines}{machine_id}/image-imports/"

    def image_import(self, machine_id: str, request_id: str) -> str:
        return f"{self.image_imports(machine_id)}{request_id}"

    # unit states published by agents, under the publishing machine's lease
    @property
    def states(self) -> str:
        return f"{self.prefix}states/"

    def unit_states(self, name: str) -> str:
        return f"{self.states}{name}/"

    def state(self, name: str, machine_id: str) -> str:
        return f"{self.states}{name}/{machine_id}"

    # the end of a submission of many units (one key, any client; value = units created): the
    # engine plans a burst when it sees it instead of waiting for the job news to pause
    @property
    def submitted(self) -> str:
        return f"{self.prefix}submitted"

    # the engine leader's lease
    @property
    def engine_leader(self) -> str:
        return f"{self.prefix}lease/engine-leader"

    def strip(self, key: str, base: str) -> str:
        if not key.startswith(base):
            raise ValueError(f"key {key!r} is not below {base!r}")
        return key[len(base):]
