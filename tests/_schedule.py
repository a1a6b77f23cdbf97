"""How pytest-xdist hands out the tests: whole modules, the slowest modules first.

xdist's `--dist load` sends each worker a contiguous chunk of the collection, then refills a
worker with further chunks when its queue runs low. In the collection's (file) order the slow
tests sit together (the presence tests, the engine loops), so one worker got them all while the
others were done: the fast loop took 92 s, three workers idle for its last 40. Sending single
tests instead spreads a module over all workers: its module fixtures (a TLS etcd, a PKI, a
busybox image, a benchmark run) are set up again on each of them, and again each time its
tests come back to a worker after another module's, which costs CPU and breaks fixtures that
keep fixed names in the worker's etcd.

So with `-n`, `scheduler` picks xdist's `loadscope` distribution (a module at a time) in the
collection's order of modules, and the workers order their collection by `MODULE_SECONDS`, the
slowest module first (`slowest_modules_first`; the tests of a module keep their order): every
worker starts on one of the longest modules and takes the next when it is nearly done, so the
many short modules fill the gaps at the end (longest processing time first). With more
workers than cores, the module a worker gets next is the slowest of one kind (`next_module`):
one that works the CPU while fewer than one per core run on the other workers, else one that
mostly waits (`WAITING_MODULES`), so that the waiting modules wait beside the CPU-bound ones
instead of several at once with a core idle (session 9). A run without
`-n` keeps the file order (tests/conftest.py orders only in xdist workers, all alike, so their
collections agree).

The figures are seconds a module's tests take in the fast loop on the 2-core machine (the sum
of `--durations`, under the fast loop's own load); a module missing here counts as fast, one
renamed or removed is caught by tests/unit/test_schedule.py. Order matters, not precision: list
a module once it takes a second or more. (Session 6 re-estimated the modules it made cheaper and
the CPU-bound ones listed too low from per-module CPU seconds on a loaded machine: see "Fast
loop, session 6" in docs/performance.md; session 7 those it changed: "Fast loop, session 7";
session 8 likewise: "Fast loop, session 8".)
"""

from __future__ import annotations

from typing import Protocol, Sequence, TypeVar

#: test module -> seconds its tests take in the fast loop
MODULE_SECONDS: dict[str, float] = {
    "tests/etcd/test_engine_hold.py": 10.0,  # session 8: split in three (was 29.5), see "Fast loop waits, session 8"
    "tests/etcd/test_engine_hold_together.py": 7.0,  # session 9: 4 s leases (was 7.5)
    "tests/etcd/test_engine_hold_lone.py": 4.5,
    "tests/etcd/test_fleetctl_fast_etcd.py": 20.0,  # ~10 CPU-s (fleetctl processes) since session 7; early, or it is the loop's tail
    "tests/etcd/test_presence_peers.py": 6.0,  # session 8: split in three (was 18.0)
    "tests/etcd/test_presence_peers_silent.py": 9.5,
    "tests/etcd/test_presence_peers_cutoff.py": 7.5,
    "tests/unit/test_launcher.py": 8.0,  # session 8: its fleet-run runs forked (was 17)
    "tests/etcd/test_fleetctl_fast_units.py": 11.0,
    "tests/etcd/test_fleetctl_fast_https.py": 5.0,  # session 8: unlisted (it ran among the last modules)
    "tests/etcd/test_api.py": 7.0,
    "tests/etcd/test_presence.py": 4.0,  # session 8: split in two (was 11.0); session 9: TTL 2 s (was 5.5)
    "tests/etcd/test_presence_retry.py": 5.5,
    "tests/etcd/test_engine_loop.py": 9.0,
    "tests/unit/test_engine_loop_memory.py": 7.5,
    "tests/etcd/test_presence_freeze.py": 4.0,  # session 8: split in two (was 9.0)
    "tests/etcd/test_presence_freeze_expiry.py": 4.2,  # session 9: waits for lost (was 5.0)
    "tests/etcd/test_registry.py": 8.0,
    "tests/unit/test_architecture.py": 5.5,  # session 8: one walk per tree (was 7.5)
    "tests/etcd/test_fleetctl.py": 7.0,
    "tests/unit/test_images.py": 7.0,
    "tests/etcd/test_fleetctl_fast.py": 6.0,
    "tests/unit/test_dead_code.py": 5.0,
    "tests/etcd/test_api_openapi.py": 4.2,
    "tests/unit/test_vagrant.py": 4.0,
    "tests/etcd/test_bench_smoke.py": 2.0,  # session 8: one scale run (was 4.0)
    "tests/unit/test_launcher_hardening.py": 4.0,
    "tests/unit/test_forked_cli.py": 4.5,  # session 7: unlisted, it ran among the last modules and was the loop's tail
    "tests/etcd/test_image_fetch.py": 3.4,
    "tests/etcd/test_api_watch.py": 3.3,
    "tests/unit/test_launcher_handover.py": 3.5,  # session 7: the reaping tests wait for events (was 9.7)
    "tests/etcd/test_pki.py": 3.0,
    "tests/unit/test_scheduler.py": 3.0,
    "tests/unit/test_image_build_busybox.py": 3.0,
    "tests/etcd/test_unit_control.py": 2.5,
    "tests/etcd/test_fleetctl_api.py": 2.5,
    "tests/unit/test_fleetctl_containers.py": 2.5,
    "tests/etcd/test_dashboard.py": 2.4,
    "tests/etcd/test_registry_security.py": 2.0,
    "tests/unit/test_daemon_cli.py": 2.0,
    "tests/unit/test_requirements.py": 2.0,
    "tests/etcd/test_discovery_etcd.py": 1.6,
    "tests/etcd/test_secrets.py": 1.5,
    "tests/unit/test_fleetctl_quickunit.py": 1.5,
    "tests/unit/test_metrics.py": 1.5,
    "tests/etcd/test_api_auth.py": 1.2,
    "tests/unit/test_agent_plan.py": 1.2,
    "tests/unit/test_unit_file.py": 1.1,
    "tests/unit/test_lease_timing.py": 1.2,
    "tests/unit/test_engine_burst_flow.py": 5.0,  # session 8: unlisted, a module that waits ran last
    "tests/unit/test_engine_burst_mark.py": 5.0,  # session 9: unlisted, it ran last (8 s; 5 since its lag test waits 3 s, not 6)
    "tests/etcd/test_etcd_server.py": 2.5,
    "tests/etcd/test_api_feed_hub.py": 2.0,
    "tests/unit/test_engine_incremental_changes.py": 1.0,
    "tests/etcd/test_fleetctl_startup.py": 1.0,
}


class _Item(Protocol):
    nodeid: str


T = TypeVar("T", bound=_Item)


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def slowest_modules_first(items: Sequence[T]) -> list[T]:
    """The items, those of the slowest modules first; a module's own order kept, and the order
    of the modules not listed (a stable sort)."""
    return sorted(items, key=lambda item: -MODULE_SECONDS.get(module_of(item.nodeid), 0.0))


#: modules that mostly wait (TTLs, settle times, quiet spells, freezes): their worker's CPU was
#: 1-11 % of their wall time in a fast loop at load 9 (session 9), the next modules 12 % and more
WAITING_MODULES = frozenset({
    "tests/etcd/test_engine_hold.py", "tests/etcd/test_engine_hold_together.py",
    "tests/etcd/test_engine_hold_lone.py", "tests/etcd/test_presence_peers.py",
    "tests/etcd/test_presence_peers_silent.py", "tests/etcd/test_presence_peers_cutoff.py",
    "tests/etcd/test_presence.py", "tests/etcd/test_presence_retry.py",
    "tests/etcd/test_presence_freeze.py", "tests/etcd/test_presence_freeze_expiry.py",
    "tests/etcd/test_engine_loop.py", "tests/unit/test_engine_loop_memory.py",
    "tests/etcd/test_registry.py", "tests/etcd/test_api_watch.py", "tests/etcd/test_api_feed_hub.py",
    "tests/unit/test_engine_burst_flow.py", "tests/unit/test_engine_burst_mark.py",
})


def next_module(queued: Sequence[str], running: Sequence[str], cores: int) -> str:
    """The module (or scope) to hand to a worker that asks for work, given the queue (slowest
    first) and what the other workers run: while fewer than `cores` modules that work the CPU
    run, the first such module; else the first that mostly waits (WAITING_MODULES); the first
    of the other kind when none of that one is left. So the cores are kept busy by as many
    CPU-bound modules as there are cores, and the waiting ones wait beside them instead of
    several of them at once with a core idle."""
    busy = sum(1 for m in running if module_of(m) not in WAITING_MODULES)
    want_waiting = busy >= cores
    for m in queued:
        if (module_of(m) in WAITING_MODULES) == want_waiting:
            return m
    return queued[0]


def scheduler(config, log, cores: int | None = None):
    """For tests/conftest.py's pytest_xdist_make_scheduler: with `--dist load` (what `-n` picks
    unless told otherwise) xdist's loadscope scheduler over the workers' order of modules, each
    worker's next module chosen by `next_module` when there are more workers than cores (the
    machine's, or `cores`); None (xdist's own choice) for other modes."""
    if config.getvalue("dist") != "load":
        return None
    import os

    from xdist.scheduler import LoadScopeScheduling

    cores = cores or len(os.sched_getaffinity(0))

    class KindsScheduling(LoadScopeScheduling):
        def _assign_work_unit(self, node) -> None:
            if len(self.nodes) > cores and len(self.workqueue) > 1:
                running = [next((scope for scope, tests in work.items() if not all(tests.values())), "")
                           for other, work in self.assigned_work.items() if other is not node]
                scope = next_module(list(self.workqueue), [r for r in running if r], cores)
                self.workqueue.move_to_end(scope, last=False)  # what the base class takes next
            super()._assign_work_unit(node)

    config.option.loadscopereorder = False  # loadscope would sort the modules by their number of tests
    return KindsScheduling(config, log)
