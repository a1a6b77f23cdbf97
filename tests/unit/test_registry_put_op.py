"""fleetd/registry/connection.py `PutOp` (RegistryCore.put_op): a put written into the
transaction's message in place is the very RequestOp aetcd's `tx.put` becomes, in order among
aetcd's own operations (the bytes etcd receives are the same)."""

from __future__ import annotations

from aetcd import rpc

from fleetd.config import EtcdSettings
from fleetd.registry.connection import _add_requests, _Client, PutOp


def test_puts_in_place_are_aetcds_puts_in_their_order():
    client = _Client(EtcdSettings())
    tx = client.transactions
    mixed = [tx.put(b"a", b"1"), PutOp(b"b", b"2"), PutOp(b"c", b""), tx.get(b"d"),
             tx.delete(b"e"), PutOp(b"f", b"{\"x\":1}")]
    plain = [tx.put(b"a", b"1"), tx.put(b"b", b"2"), tx.put(b"c", b""), tx.get(b"d"), tx.delete(b"e"),
             tx.put(b"f", b"{\"x\":1}")]
    built = rpc.TxnRequest()
    _add_requests(client, built.success, mixed)
    expected = rpc.TxnRequest(success=client.ops_to_requests(plain))
    assert built == expected
    assert built.SerializeToString() == expected.SerializeToString()


def test_only_aetcd_operations_or_none():
    client = _Client(EtcdSettings())
    tx = client.transactions
    built = rpc.TxnRequest()
    _add_requests(client, built.success, [tx.get(b"a"), tx.put(b"b", b"2")])
    _add_requests(client, built.failure, [])
    assert built == rpc.TxnRequest(success=client.ops_to_requests([tx.get(b"a"), tx.put(b"b", b"2")]))
