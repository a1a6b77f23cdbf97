"""Names vulture (tests/unit/test_dead_code.py) cannot see being used. Keep this list short: every
entry says who uses the name. Read by vulture only, never imported."""

# ruff: noqa
# fmt: off
from fleetd.agent.loop import AgentStats
from fleetd.api.context import ApiContext
from fleetd.engine.leader import EngineStats
from fleetlab.state import LabState

AgentStats.last_error          # the agent's last failed task, for a debugger or a future metric
ApiContext.extras              # per-server slots for API extensions (e.g. the dashboard's feed)
EngineStats.snapshot_seconds   # read through dataclasses.asdict by the scale benchmark (fleetlab/bench)
EngineStats.reconcile_seconds
EngineStats.reconcile_cpu_seconds
EngineStats.apply_seconds
LabState.tmpfs                 # persisted in the lab's state file (asdict)
_.gname                        # tarfile.TarInfo fields written for the archive (fleetd/images/tree.py)
_.uname
_.clusterstub                  # aetcd.Client attributes (fleetd/registry/_aetcd_compat.py)
_.maintenancestub
_.__qualname__                 # the registry facade's delegating methods
_.__doc__
_.multiple_endpoints           # fleetctl/api_client.py, being rewritten on the fleetctl branch (issue 11)
_.connection_made              # asyncio protocol callbacks (fleetd/discovery/dns.py, fleetlab/bench/discovery.py)
_.datagram_received
_.error_received
_.reserved_cpus                # dashboard rows, read by templates/dashboard/_macros.j2
_.reserved_memory
_.undone                       # fleetlab/soak.py: when a fault was undone (kept with the fault's record)
EngineStats.full_reads         # read through dataclasses.asdict by the scale benchmark (fleetlab/bench/scale.py)
EngineStats.view_passes
EngineStats.last_engine_seconds
EngineStats.last_decide_seconds
_.__getattr__                  # fleetd/images/__init__.py: the module's lazy attributes (PEP 562)
_.strict                       # fleetctl/lean.py _Context: read by the C JSON scanner (_json.make_scanner)
_.object_hook
_.object_pairs_hook
_.parse_float
_.parse_int
_.parse_constant
