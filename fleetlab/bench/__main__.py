"""`python -m fleetlab.bench <name> [options]`: run a benchmark that needs no lab."""

from fleetlab.bench.pure import main

main(prog_name="python -m fleetlab.bench")
