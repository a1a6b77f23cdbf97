"""fleetctl's output formats: fleet's tab-aligned tables, machine legends and field maps."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover - fleetctl's fast path (fleetctl/fast.py) imports this module alone
    from typing import Callable, Mapping, Sequence

    from fleetd.model import Machine, UnitState
    from fleetd.wire import UnitInfo

    UnitFileField = Callable[[UnitInfo, bool, Mapping[str, Machine]], str]
    UnitStateField = Callable[[UnitState, bool, Mapping[str, Machine]], str]
    MachineField = Callable[[Machine, bool], str]

TAB_WIDTH = 8


def tabwrite(rows: Sequence[Sequence[str]]) -> str:
    """Format rows like Go's tabwriter.NewWriter(out, 0, 8, 1, '\\t', 0), as fleetctl does.

    Every cell but the last of a row is padded with tabs to the column's width (the widest cell
    plus one, rounded up to a multiple of 8).
    """
    if not rows:
        return ""
    columns = max(len(r) for r in rows)
    widths = [0] * columns
    for row in rows:
        for j, cell in enumerate(row[:-1]):
            widths[j] = max(widths[j], len(cell) + 1)
    lines = []
    for row in rows:
        parts = []
        for j, cell in enumerate(row):
            if j == len(row) - 1:
                parts.append(cell)
                continue
            cellw = (widths[j] + TAB_WIDTH - 1) // TAB_WIDTH * TAB_WIDTH
            parts.append(cell + "\t" * ((cellw - len(cell) + TAB_WIDTH - 1) // TAB_WIDTH))
        lines.append("".join(parts))
    return "\n".join(lines) + "\n"


def machine_id_legend(machine_id: str, full: bool) -> str:
    return machine_id if full else f"{machine_id[:8]}..."


def machine_full_legend(machine: Machine, full: bool) -> str:
    legend = machine_id_legend(machine.id, full)
    return f"{legend}/{machine.public_ip}" if machine.public_ip else legend


def _machine_legend(machine_id: str, machines: Mapping[str, Machine], full: bool) -> str:
    """A machine's legend by ID; an unknown machine (gone from the cluster) shows its ID alone."""
    machine = machines.get(machine_id)
    return machine_full_legend(machine, full) if machine is not None else machine_id_legend(machine_id, full)


def short_hash(unit_hash: str, full: bool) -> str:
    return unit_hash if full else unit_hash[:7]


def format_metadata(metadata: Mapping[str, str]) -> str:
    if not metadata:
        return "-"
    return ",".join(f"{k}={metadata[k]}" for k in sorted(metadata))


def _target(u: UnitInfo, full: bool, machines: Mapping[str, Machine]) -> str:
    if u.is_global:
        return "global"
    if not u.machine_id:
        return "-"
    return _machine_legend(u.machine_id, machines, full)


def _description(u: UnitInfo) -> str:
    values = [o.value for o in u.file.options if o.section == "Unit" and o.name == "Description"]
    return values[-1] if values and values[-1] else "-"


UNIT_FILE_FIELDS: dict[str, UnitFileField] = {
    "unit": lambda u, full, m: u.name,
    "global": lambda u, full, m: "true" if u.is_global else "false",
    "dstate": lambda u, full, m: u.desired_state.value or "-",
    "target": _target,
    "tmachine": _target,
    "state": lambda u, full, m: "-" if u.is_global or not u.current_state else u.current_state,
    "hash": lambda u, full, m: short_hash(u.hash, full),
    "desc": lambda u, full, m: _description(u),
}
DEFAULT_UNIT_FILE_FIELDS = "unit,hash,dstate,state,target"

def _state_machine(s: UnitState, full: bool, machines: Mapping[str, Machine]) -> str:
    return _machine_legend(s.machine_id, machines, full)


UNIT_FIELDS: dict[str, UnitStateField] = {
    "unit": lambda s, full, m: s.name,
    "load": lambda s, full, m: s.load_state or "-",
    "active": lambda s, full, m: s.active_state or "-",
    "sub": lambda s, full, m: s.sub_state or "-",
    "machine": _state_machine,
    "hash": lambda s, full, m: short_hash(s.hash, full) if s.hash else "-",
}
DEFAULT_UNIT_FIELDS = "unit,machine,active,sub"

MACHINE_FIELDS: dict[str, MachineField] = {
    "machine": lambda m, full: machine_id_legend(m.id, full),
    "ip": lambda m, full: m.public_ip or "-",
    "metadata": lambda m, full: format_metadata(m.metadata),
    # beyond fleet: capacity, drain state and version
    "cpus": lambda m, full: f"{m.capacity.cpu:g}" if m.capacity.cpu else "-",
    "memory": lambda m, full: _human_bytes(m.capacity.memory) if m.capacity.memory else "-",
    "draining": lambda m, full: "true" if m.draining else "false",
    "version": lambda m, full: m.version or "-",
}
DEFAULT_MACHINE_FIELDS = "machine,ip,metadata"


def _human_bytes(value: int) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}".replace(".0", "")
        value /= 1024
    return str(value)


def parse_fields(spec: str, valid: Mapping[str, object]) -> list[str]:
    """Split a --fields value; raise ValueError with fleet's message for an unknown key."""
    if not spec:
        raise ValueError("Must define output format")
    cols = spec.split(",")
    for col in cols:
        if col not in valid:
            raise ValueError(f'Invalid key in output format: "{col}"')
    return cols
