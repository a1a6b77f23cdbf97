"""fleetctl/fast_etcd_state.py's ports against what they port: a unit's current state
(fleetd.jobstate.current_state_of), [X-Fleet] Global= (fleetd.unit.requirements), the active
states (fleetd.model), and the registry's records (fleetd.registry.codec) against the JSON the
gateway module writes and reads."""

from __future__ import annotations

from hypothesis import given, strategies as st

from fleetctl.fast_etcd_state import ACTIVE_STATES, current_state, is_global
from fleetd import model
from fleetd.jobstate import current_state_of
from fleetd.model import DesiredState, Placement, Unit, UnitState
from fleetd.registry import codec, records
from fleetd.registry.gateway import prefix_end
from fleetd.unit.file import UnitFile

BODY = UnitFile.parse("[Service]\nExecStart=/bin/true\n")
MACHINES = ["m1", "m2"]
SYSTEMD_STATES = sorted(ACTIVE_STATES | {"inactive", "failed", ""})


def test_active_states_are_the_models():
    assert ACTIVE_STATES == model.ACTIVE_STATES


states_strategy = st.lists(st.builds(
    lambda mid, same_hash, active, applied: UnitState("u.service", mid, BODY.hash if same_hash else "other", "loaded",
                                                      active, "x", applied),
    st.sampled_from(MACHINES), st.booleans(), st.sampled_from(SYSTEMD_STATES),
    st.sampled_from(["", "loaded", "launched"])), max_size=3, unique_by=lambda s: s.machine_id)


@given(st.one_of(st.none(), st.tuples(st.sampled_from(MACHINES), st.sampled_from(["loaded", "launched"]))),
       states_strategy)
def test_current_state_is_jobstates(placed, states):
    unit = Unit("u.service", BODY, DesiredState.LAUNCHED)
    placement = None if placed is None else Placement("u.service", placed[0], BODY.hash, DesiredState(placed[1]))
    states = sorted(states, key=lambda s: s.machine_id)
    wire = [codec.loads(codec.encode_state(s)) for s in states]  # as stored in etcd
    target = None if placed is None else (placed[0], codec.loads(codec.encode_target(BODY.hash, placement.desired_state)))
    assert current_state(BODY.hash, target, wire) == current_state_of(unit, placement, states)


@given(st.lists(st.sampled_from(["true", "True", " yes", "1", "on", "t", "false", "no", "y", "", "0"]), max_size=3))
def test_global_is_the_requirements(values):
    text = "[Service]\nExecStart=/bin/true\n" + ("[X-Fleet]\n" + "".join(f"Global={v}\n" for v in values) if values else "")
    unit = Unit("u.service", UnitFile.parse(text))
    options = [(o.section, o.name, o.value) for o in unit.file.options]
    assert is_global(options) == unit.is_global


def test_job_records_are_the_codecs():
    assert records.job_value("a.service", "h", "launched") == codec.encode_job("a.service", "h", DesiredState.LAUNCHED)


def test_prefix_end_is_aetcds():
    from aetcd.utils import prefix_range_end

    for prefix in (b"/fleet/job/", b"a\xff", b"\xff\xff", b"x"):
        assert prefix_end(prefix) == prefix_range_end(prefix)


def test_endpoints_read_as_the_registry_reads_them():
    """gateway.parse_endpoint (a regular expression: urllib.parse costs more than a request)
    against urlsplit as fleetd.registry.connection.grpc_target reads URLs; None is always
    allowed (the full CLI then does the command)."""
    from urllib.parse import urlsplit

    from fleetd.registry.gateway import parse_endpoint

    for endpoint in ("http://127.0.0.1:2379", "https://etcd.example:4001/", "10.0.0.1", "10.0.0.1:2380",
                     "http://[::1]:2379", "HTTP://Host:1", "http://h:0", "http://h:99999", "http://u@h:1",
                     "http://h:1/path", "ftp://h:1", "http://h:x", "http://h:1?q", "", "unix:///x.sock"):
        mine = parse_endpoint(endpoint)
        if mine is None:
            continue
        url = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        assert mine == (url.scheme, url.hostname, url.port or 2379), endpoint
    assert parse_endpoint("http://127.0.0.1:2379") == ("http", "127.0.0.1", 2379)
    assert parse_endpoint("http://[::1]:2379") == ("http", "::1", 2379)
    assert parse_endpoint("https://h") == ("https", "h", 2379)
