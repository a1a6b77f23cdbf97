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


def test_grpc_lite_messages_are_etcds_protobuf():
    """grpc_lite's hand-written protobuf against etcd's own messages (aetcd's generated rpc
    module): a transaction it encodes parses as the same TxnRequest, and a TxnResponse etcd's
    code encodes decodes to what the JSON gateway would answer."""
    from aetcd import rpc

    from fleetd.registry import gateway as g
    from fleetd.registry.grpc_lite import decode_txn, encode_compare, encode_op, pb_bytes

    compare = [g.absent("/p/job/a"), g.unchanged("/p/job/b", 300)]
    success = [g.op_get("/p/states/a/", prefix=True), g.op_put("/p/job/a", b'{"x":1}'), g.op_delete("/p/job/c")]
    raw = b"".join(pb_bytes(1, encode_compare(c)) for c in compare) + b"".join(pb_bytes(2, encode_op(o)) for o in success)
    request = rpc.TxnRequest.FromString(raw)
    assert [(c.key, c.target, c.result, c.WhichOneof("target_union"), c.create_revision, c.mod_revision)
            for c in request.compare] == [(b"/p/job/a", rpc.Compare.CREATE, rpc.Compare.EQUAL, "create_revision", 0, 0),
                                          (b"/p/job/b", rpc.Compare.MOD, rpc.Compare.EQUAL, "mod_revision", 0, 300)]
    assert request.success[0].request_range.key == b"/p/states/a/"
    assert request.success[0].request_range.range_end == b"/p/states/a0"
    assert (request.success[1].request_put.key, request.success[1].request_put.value) == (b"/p/job/a", b'{"x":1}')
    assert request.success[2].request_delete_range.key == b"/p/job/c"

    response = rpc.TxnResponse(header=rpc.ResponseHeader(revision=1234567), succeeded=True, responses=[
        rpc.ResponseOp(response_range=rpc.RangeResponse(kvs=[rpc.KeyValue(key=b"k", value=b"v", mod_revision=99,
                                                                            create_revision=7, version=2)])),
        rpc.ResponseOp(response_put=rpc.PutResponse()),
        rpc.ResponseOp(response_delete_range=rpc.DeleteRangeResponse(deleted=1))])
    ok, results, revision = decode_txn(response.SerializeToString())
    assert (ok, revision) == (True, 1234567)
    assert results == [[{"key": g.b64(b"k"), "create_revision": "7", "mod_revision": "99", "version": "2",
                         "value": g.b64(b"v")}], {"response_put": {}}, {"response_delete_range": {"deleted": "1"}}]


def test_a_chunked_answer_that_comes_byte_by_byte():
    """The gateway's reader keeps its place across timeouts (a watch waits with short ones):
    headers and chunks are taken only once whole."""
    import socket

    from fleetd.registry.gateway import _Stream

    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n"
    ours, theirs = socket.socketpair()
    with ours, theirs:
        stream, head, chunks, done = _Stream(ours), None, [], False
        for byte in answer:
            theirs.send(bytes([byte]))
            while not done:
                try:
                    if head is None:
                        head = stream.head(0.005)
                        continue
                    chunk = stream.chunk(0.005)
                except TimeoutError:
                    break
                if chunk is None:
                    done = True
                else:
                    chunks.append(chunk)
    assert (head, chunks, done) == ((200, {"transfer-encoding": "chunked"}), [b"hello", b"abc"], True)
