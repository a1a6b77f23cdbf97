"""Which waiter gets which answer on a connection's shared keep-alive stream
(fleetd/registry/connection.py `_KeepAliveStream`), with a stand-in for the gRPC call whose
answers the test hands out: etcd answers a stream's requests in order, so an answer goes to
the oldest request of its lease still in line — also when that request's waiter has gone (its
answer is dropped, never taken for a newer request's); a timeout retires the stream; a stream
error fails every waiter. The same stream against a real etcd:
tests/etcd/test_registry_keepalive_stream.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc
import pytest
from aetcd import rpc

from fleetd.registry.connection import _KeepAliveStream


class FakeCall:
    """A LeaseKeepAlive call: records the requests it reads, yields the answers it is given."""

    def __init__(self, requests):
        self.sent: list[int] = []
        self.answers: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self._pump = asyncio.get_running_loop().create_task(self._read(requests))

    async def _read(self, requests) -> None:
        async for request in requests:
            self.sent.append(request.ID)

    def answer(self, lease: int, ttl: int) -> None:
        self.answers.put_nowait(rpc.LeaseKeepAliveResponse(ID=lease, TTL=ttl))

    def fail(self, error: BaseException) -> None:
        self.answers.put_nowait(error)

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self.answers.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        self.cancelled = True
        self._pump.cancel()


def _stream() -> tuple[_KeepAliveStream, SimpleNamespace]:
    calls: list[FakeCall] = []

    def open_call(requests, metadata=None):
        calls.append(FakeCall(requests))
        return calls[-1]

    connection = SimpleNamespace(_generation=0, _keepalive_stream=None,
                                 client=SimpleNamespace(leasestub=SimpleNamespace(LeaseKeepAlive=open_call),
                                                        metadata=None))
    stream = _KeepAliveStream(connection, 0)
    connection._keepalive_stream = stream
    return stream, SimpleNamespace(connection=connection, call=calls[0])


async def _sent(call: FakeCall, count: int) -> None:
    while len(call.sent) < count:
        await asyncio.sleep(0)


async def test_answers_go_to_the_oldest_request_of_their_lease():
    stream, fake = _stream()
    a1 = asyncio.ensure_future(stream.keepalive(1, 5))
    b1 = asyncio.ensure_future(stream.keepalive(2, 5))
    a2 = asyncio.ensure_future(stream.keepalive(1, 5))
    await _sent(fake.call, 3)
    assert fake.call.sent == [1, 2, 1]
    fake.call.answer(1, 30)
    fake.call.answer(2, 0)  # lease 2 is gone
    fake.call.answer(1, 29)
    assert [(await a1).TTL, (await b1).TTL, (await a2).TTL] == [30, 0, 29]
    assert stream.pending == 0 and not stream.waiting and not stream.retired


async def test_the_answer_of_a_request_whose_waiter_went_is_dropped():
    stream, fake = _stream()
    old = asyncio.ensure_future(stream.keepalive(1, 5))
    await _sent(fake.call, 1)
    old.cancel()  # e.g. the caller's own deadline: the request stays in line
    await asyncio.gather(old, return_exceptions=True)
    new = asyncio.ensure_future(stream.keepalive(1, 5))
    await _sent(fake.call, 2)
    fake.call.answer(1, 11)  # the old request's answer (its renewal may predate the new request)
    for _ in range(5):
        await asyncio.sleep(0)
    assert not new.done()
    fake.call.answer(1, 22)
    assert (await new).TTL == 22


async def test_a_timeout_retires_the_stream_and_closes_it_when_its_last_request_is_done():
    stream, fake = _stream()
    slow = asyncio.ensure_future(stream.keepalive(2, 5))
    with pytest.raises(TimeoutError):
        await stream.keepalive(1, 0.05)
    assert stream.retired and fake.connection._keepalive_stream is None
    assert not fake.call.cancelled  # `slow` keeps its own deadline on it
    fake.call.answer(1, 7)  # the late answer: dropped
    fake.call.answer(2, 9)
    assert (await slow).TTL == 9
    assert fake.call.cancelled


async def test_a_stream_error_fails_every_waiter():
    stream, fake = _stream()
    waiters = [asyncio.ensure_future(stream.keepalive(lease, 5)) for lease in (1, 2, 1)]
    await _sent(fake.call, 3)
    error = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                 details="etcd gone")
    fake.call.fail(error)
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(result is error for result in results)
    assert stream.error is error and not stream.usable


async def test_the_stream_of_an_older_generation_is_not_used():
    stream, fake = _stream()
    assert stream.usable
    fake.connection._generation = 1  # a failover
    assert not stream.usable
