"""fleetd/unit/requirements.py: `requirements_of` answers a unit without [X-Fleet] options and
resource settings with `NO_REQUIREMENTS` without the full reading; the answer is the full
reading's for every unit (a hypothesis property), and the full reading still runs for the units
that have something to read."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from _depth import examples
from fleetd.unit import UnitFile
from fleetd.unit.requirements import NO_REQUIREMENTS, Requirements, _requirements_of, requirements_of

option_names = st.sampled_from(["Description", "ExecStart", "CPUQuota", "MemoryMax", "MemoryLimit", "CPUs",
                                "Memory", "Image", "MachineID", "MachineOf", "MachineMetadata", "Conflicts",
                                "Global", "Replaces", "ReserveCPU", "ReserveMemory", "X-Unknown"])
values = st.sampled_from(["", "1", "150%", "64M", "2G", "infinity", "true", "a.service", "web@*.service",
                          "region=us", "%n", "%i", "x y"])
options = st.lists(st.tuples(st.sampled_from(["Unit", "Service", "X-Fleet", "X-Container", "Install"]),
                             option_names, values), max_size=8)
unit_names = st.sampled_from(["web.service", "web@1.service", "db.service", "x@.service"])


@settings(max_examples=examples(500), deadline=None, suppress_health_check=list(HealthCheck))
@given(options, unit_names)
def test_the_answer_is_the_full_readings(opts, name):
    unit = UnitFile.from_options(opts)
    assert requirements_of(unit, name) == _requirements_of(unit, name)


def test_a_plain_unit_requires_nothing_without_the_full_reading():
    unit = UnitFile.parse("[Unit]\nDescription=plain\n\n[Service]\nExecStart=/bin/sleep 1\nMemory=1G\n")
    assert requirements_of(unit, "plain.service") is NO_REQUIREMENTS == Requirements()


def test_a_resource_setting_or_an_x_fleet_option_is_read():
    assert requirements_of(UnitFile.parse("[Service]\nMemoryMax=64M\n"), "a.service").memory == 64 << 20
    assert requirements_of(UnitFile.parse("[X-Container]\nCPUs=1.5\n"), "a.service").cpu == 1.5
    assert requirements_of(UnitFile.parse("[X-Fleet]\nGlobal=true\n"), "a.service").is_global
    unknown = requirements_of(UnitFile.parse("[X-Fleet]\nSomething=1\n"), "a.service")
    assert unknown.unknown_options == ("Something",) and unknown is not NO_REQUIREMENTS
