"""Benchmarks. Each is a function returning a dict of figures, exposed as `fleet-lab bench <name>`
(see docs/performance.md).

- Lab benchmarks (start, burst, failover, footprint): real systemd in nspawn nodes, a real etcd
  cluster, real fleetd processes; each boots a uniquely named lab of its own and always tears it
  down (or uses a running lab, `keep_lab=NAME`, left running).
- Benchmarks without a lab (lookup, scale, scheduler; `python -m fleetlab.bench <name>`): a real
  etcd started for the run, or no etcd at all (scheduler).

Nothing is imported here: import the benchmark's own module (`fleetlab.bench.start.start`,
`fleetlab.bench.scale.scale`, ...), so that one benchmark (and the scale benchmark's child
processes, whose footprint is measured) loads only what it uses.
"""
