"""How pytest-xdist hands out the tests: the known-slow ones first, one test at a time.

xdist's `--dist load` sends each worker a contiguous chunk of the collection (a sixteenth of it
with four workers), then refills a worker with further chunks of up to half its share when its
queue runs low. In the collection's (file) order the slow tests sit together (the presence
tests, the engine loops), so one worker got them all while the others were done: the fast loop
took 92 s, three workers idle for its last 40. Here the workers order their collection slowest
first (`slow_first`, applied in xdist workers only: all workers order alike, so their collections
agree, and a run without `-n` keeps the file order and its module fixtures set up once), and
`scheduler` sends the tests one at a time (`--maxschedchunk=1`, unless given): each worker takes
the next test when it finishes one, so the longest tests start at once on different workers and
the many short ones fill the gaps at the end (longest processing time first).

The figures are seconds measured in the fast loop on the 2-core machine (`--durations`); a test
missing here counts as fast, one renamed is caught by tests/unit/test_schedule.py. Order
matters, not precision: list a test once it takes about 1.5 s or more.
"""

from __future__ import annotations

from typing import Protocol, Sequence, TypeVar

#: node id, or node id without its [parameters] -> expected seconds
SLOW: dict[str, float] = {
    "tests/etcd/test_engine_hold.py::test_three_of_four_machines_vanishing_at_once_move_nothing": 14.4,
    "tests/etcd/test_engine_loop.py::test_six_units_spread_and_fail_over": 6.5,
    "tests/unit/test_engine_loop_memory.py::test_six_units_spread_and_fail_over": 6.5,
    "tests/etcd/test_presence_peers.py::test_total_etcd_outage_fences_nobody": 5.1,
    "tests/etcd/test_api.py::test_503_while_etcd_is_unreachable_then_recovers": 5.3,
    "tests/etcd/test_presence.py::test_lost_at_expiry_and_resumed_when_etcd_kept_the_lease": 4.6,
    "tests/etcd/test_presence_freeze.py::test_a_freeze_longer_than_the_ttl_sets_lost_before_etcd_may_expire_the_lease": 4.0,
    "tests/etcd/test_presence_freeze.py::test_a_freeze_of_half_the_ttl_keeps_the_lease_confirmed": 4.0,
    "tests/etcd/test_presence_peers.py::test_silent_peers_for_a_moment_fence_nobody_during_an_outage": 4.0,
    "tests/etcd/test_presence_peers.py::test_peers_silent_for_too_long_fence_a_holding_machine": 4.0,
    "tests/etcd/test_api_openapi.py::test_the_document_is_valid_openapi": 3.7,
    "tests/etcd/test_registry_security.py::test_tls_with_client_certificate": 3.5,
    "tests/etcd/test_unit_control.py::test_no_accepted_unit_serializes_to_a_refused_character": 3.2,
    "tests/unit/test_launcher_handover.py::test_init_reaps_orphans": 3.2,
    "tests/unit/test_dead_code.py::test_no_dead_code_in_the_packages": 3.0,
    "tests/etcd/test_registry_security.py::test_user_and_password": 3.0,
    "tests/etcd/test_presence.py::test_registering_after_an_outage_fences_when_the_budget_runs_out": 2.7,
    "tests/etcd/test_engine_loop.py::test_leader_failover_without_duplicates": 2.5,
    "tests/unit/test_launcher.py::test_sigterm_to_launcher_ends_every_container_process": 2.2,
    "tests/etcd/test_pki.py::test_reader_reads_but_cannot_write": 2.1,
    "tests/unit/test_engine_loop_memory.py::test_leader_failover_without_duplicates": 2.1,
    "tests/etcd/test_fleetctl_fast.py::test_fast_path_prints_what_the_full_cli_prints_and_imports_neither_click_nor_fleetd": 2.0,
    "tests/etcd/test_presence_peers.py::test_a_machine_that_reaches_nobody_fences": 2.0,
    "tests/etcd/test_registry.py::test_machine_expires_with_lease": 2.0,
    "tests/etcd/test_presence_peers.py::test_an_isolated_machine_fences_by_its_deadline": 2.0,
    "tests/etcd/test_presence.py::test_a_keepalive_that_got_no_answer_is_retried_soon": 1.9,
    "tests/unit/test_launcher.py::test_sigkill_to_launcher_kills_the_container": 1.9,
    "tests/etcd/test_api.py::test_tcp_with_tls_requires_client_certificates": 1.9,
    "tests/etcd/test_api.py::test_systemd_socket_activation": 1.8,
    "tests/etcd/test_api_openapi.py::test_every_documented_status_is_reachable": 1.8,
    "tests/etcd/test_registry.py::test_failover_to_the_next_member_when_one_does_not_answer": 1.6,
    "tests/etcd/test_fleetctl_api.py::test_https_endpoint_with_client_certificates": 1.6,
    "tests/unit/test_launcher.py::test_errors_are_one_line_with_docker_exit_codes": 1.6,
    "tests/unit/test_architecture.py::test_pyflakes_finds_no_undefined_or_redefined_name": 1.4,
    "tests/etcd/test_pki.py::test_fleetd_works_as_its_certificates_user": 1.4,
    "tests/unit/test_vagrant.py::test_vm_configuration_is_what_fleetd_expects": 1.3,
}


class _Item(Protocol):
    nodeid: str


T = TypeVar("T", bound=_Item)


def expected_seconds(nodeid: str) -> float:
    """What SLOW says of a test: by its id, else by its id without parameters."""
    for key in (nodeid, nodeid.split("[", 1)[0]):
        if key in SLOW:
            return SLOW[key]
    return 0.0


def slow_first(items: Sequence[T]) -> list[T]:
    """The items, the slowest first; the others keep their order (a stable sort)."""
    return sorted(items, key=lambda item: -expected_seconds(item.nodeid))


def scheduler(config, log):
    """For tests/conftest.py's pytest_xdist_make_scheduler: `--dist load` sending one test at a
    time unless `--maxschedchunk` says otherwise; None (xdist's own choice) for other modes."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScheduling

    chosen = LoadScheduling(config, log)
    if config.getoption("maxschedchunk") is None:
        chosen.maxschedchunk = 1
    return chosen
