"""JSON encodings of registry values (the wire format stored in etcd; see docs/registry.md)."""

from __future__ import annotations

from typing import Mapping

from fleetd.model import DesiredState, Machine, Placement, Resources, UnitState
from fleetd.registry.records import dumps, job_value, loads, plain

__all__ = ["dumps", "loads", "encode_job", "decode_job", "encode_target", "decode_placement", "encode_machine",
           "decode_machine", "encode_state", "decode_state"]


def encode_job(name: str, unit_hash: str, desired: DesiredState) -> bytes:
    return job_value(name, unit_hash, desired.value)


def decode_job(raw: bytes) -> tuple[str, str, DesiredState]:
    data = loads(raw)
    return data["name"], data["hash"], DesiredState(data["desiredState"])


def encode_target(unit_hash: str, desired: DesiredState) -> bytes:
    if plain(unit_hash):
        # what dumps() gives (sorted keys, no spaces) when no character needs escaping; a
        # placement of every unit of a burst is encoded in the engine's writing pass
        return f'{{"desiredState":"{desired.value}","hash":"{unit_hash}"}}'.encode()
    return dumps({"hash": unit_hash, "desiredState": desired.value})


def decode_placement(name: str, machine_id: str, raw: bytes) -> Placement:
    data = loads(raw)
    return Placement(name, machine_id, data["hash"], DesiredState(data["desiredState"]))


def encode_machine(machine: Machine) -> bytes:
    return dumps(
        {
            "id": machine.id,
            "publicIP": machine.public_ip,
            "metadata": dict(machine.metadata),
            "version": machine.version,
            "cpus": machine.capacity.cpu,
            "memory": machine.capacity.memory,
        }
    )


def decode_machine(raw: bytes, dynamic_metadata: Mapping[str, str], draining: bool) -> Machine:
    data = loads(raw)
    metadata = dict(data.get("metadata") or {})
    for key, value in dynamic_metadata.items():
        if value == "":
            metadata.pop(key, None)  # "" records a deletion, as in fleet
        else:
            metadata[key] = value
    return Machine(
        id=data["id"],
        public_ip=data.get("publicIP", ""),
        metadata=metadata,
        version=data.get("version", ""),
        capacity=Resources(float(data.get("cpus") or 0), int(data.get("memory") or 0)),
        draining=draining,
    )


def encode_state(state: UnitState) -> bytes:
    record = {
        "name": state.name,
        "machineID": state.machine_id,
        "hash": state.hash,
        "loadState": state.load_state,
        "activeState": state.active_state,
        "subState": state.sub_state,
    }
    if state.applied:
        record["applied"] = state.applied
    return dumps(record)


def decode_state(raw: bytes) -> UnitState:
    data = loads(raw)
    return UnitState(
        name=data["name"],
        machine_id=data["machineID"],
        hash=data.get("hash", ""),
        load_state=data.get("loadState", ""),
        active_state=data.get("activeState", ""),
        sub_state=data.get("subState", ""),
        applied=data.get("applied", ""),
    )
