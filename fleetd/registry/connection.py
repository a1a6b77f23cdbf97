"""The etcd connection: endpoints, TLS, auth, timeouts and error translation over aetcd."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import ipaddress
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence, TypeVar
from urllib.parse import urlsplit

import aetcd
import aetcd.exceptions
import grpc
from aetcd import rpc

from fleetd.config import EtcdSettings
from fleetd.errors import ConfigError, RegistryError, RegistryUnavailable
from fleetd.registry._aetcd_compat import AetcdClientBase

log = logging.getLogger(__name__)

T = TypeVar("T")


def grpc_target(endpoints: tuple[str, ...]) -> tuple[str, bool]:
    """Turn etcd URLs into one gRPC target (with failover between IP endpoints) and a TLS flag."""
    hosts: list[tuple[str, int]] = []
    schemes = set()
    for endpoint in endpoints:
        url = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"invalid etcd endpoint {endpoint!r} (expected http(s)://host:port)")
        schemes.add(url.scheme)
        hosts.append((url.hostname, url.port or 2379))
    if len(schemes) > 1:
        raise ConfigError("etcd endpoints mix http and https")
    tls = schemes == {"https"}

    def is_ip(host: str) -> bool:
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            return False

    if len(hosts) > 1 and all(is_ip(h) for h, _ in hosts):
        family = {ipaddress.ip_address(h).version for h, _ in hosts}
        if family == {4}:
            return "ipv4:" + ",".join(f"{h}:{p}" for h, p in hosts), tls
        if family == {6}:
            return "ipv6:" + ",".join(f"[{h}]:{p}" for h, p in hosts), tls
    host, port = hosts[0]
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}"), tls


@dataclass
class RequestCounter:
    """etcd traffic of the Connections it is attached to: RPCs, messages and protobuf bytes.

    Attach one with `Connection(settings, counter=RequestCounter())`; without one, nothing is
    counted and the gRPC stubs are aetcd's own (no cost). A unary call is one request; on a
    stream (watch, lease keep-alive) every message sent is one request. Bytes are the
    protobuf ByteSize() of each message (no gRPC/HTTP2 framing).
    """

    calls: dict[str, int] = field(default_factory=dict)  # per method (e.g. "KV/Txn")
    sent: dict[str, int] = field(default_factory=dict)  # messages sent, per method
    received: dict[str, int] = field(default_factory=dict)  # messages received, per method
    sent_bytes: dict[str, int] = field(default_factory=dict)
    received_bytes: dict[str, int] = field(default_factory=dict)

    def _add(self, table: dict[str, int], method: str, amount: int) -> None:
        table[method] = table.get(method, 0) + amount

    def on_call(self, method: str) -> None:
        self._add(self.calls, method, 1)

    def on_send(self, method: str, message: Any) -> None:
        self._add(self.sent, method, 1)
        self._add(self.sent_bytes, method, message.ByteSize())

    def on_receive(self, method: str, message: Any) -> None:
        self._add(self.received, method, 1)
        self._add(self.received_bytes, method, message.ByteSize())

    @property
    def requests(self) -> int:
        """Unary calls plus messages sent on streams."""
        return sum(self.sent.values())

    @property
    def bytes_sent(self) -> int:
        return sum(self.sent_bytes.values())

    @property
    def bytes_received(self) -> int:
        return sum(self.received_bytes.values())

    _TABLES = ("calls", "sent", "received", "sent_bytes", "received_bytes")

    def _combine(self, other: "RequestCounter", sign: int) -> "RequestCounter":
        total = RequestCounter()
        for counter, factor in ((self, 1), (other, sign)):
            for name in self._TABLES:
                for method, amount in getattr(counter, name).items():
                    total._add(getattr(total, name), method, factor * amount)
        return total

    def __add__(self, other: "RequestCounter") -> "RequestCounter":
        return self._combine(other, 1)

    def __sub__(self, other: "RequestCounter") -> "RequestCounter":
        """What was counted since `other` (an earlier copy of this counter)."""
        return self._combine(other, -1)

    def copy(self) -> "RequestCounter":
        return self._combine(RequestCounter(), 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "by_method": {
                method: {
                    "calls": self.calls.get(method, 0),
                    "sent": self.sent.get(method, 0),
                    "received": self.received.get(method, 0),
                    "sent_bytes": self.sent_bytes.get(method, 0),
                    "received_bytes": self.received_bytes.get(method, 0),
                }
                for method in sorted(self.calls)
                if any(getattr(self, name).get(method) for name in self._TABLES)
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RequestCounter":
        counter = cls()
        for method, row in data.get("by_method", {}).items():
            for name in cls._TABLES:
                if row.get(name):
                    getattr(counter, name)[method] = row[name]
        return counter


def _method_name(path: str) -> str:
    """'/etcdserverpb.KV/Txn' -> 'KV/Txn'."""
    service, _, method = path.lstrip("/").partition("/")
    return f"{service.rpartition('.')[2]}/{method}"


class _CountedUnary:
    __slots__ = ("_inner", "_method", "_counter")

    def __init__(self, inner: Any, method: str, counter: RequestCounter):
        self._inner, self._method, self._counter = inner, method, counter

    async def __call__(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        counter, method = self._counter, self._method
        counter.on_call(method)
        counter.on_send(method, request)
        response = await self._inner(request, *args, **kwargs)
        counter.on_receive(method, response)
        return response


class _CountedStreamCall:
    """A streaming call whose received messages are counted; everything else is the call's."""

    def __init__(self, call: Any, method: str, counter: RequestCounter):
        self._call, self._method, self._counter = call, method, counter

    def __aiter__(self) -> "_CountedStreamCall":
        self._iter = self._call.__aiter__()
        return self

    async def __anext__(self) -> Any:
        message = await self._iter.__anext__()
        self._counter.on_receive(self._method, message)
        return message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class _CountedStream:
    __slots__ = ("_inner", "_method", "_counter", "_request_stream")

    def __init__(self, inner: Any, method: str, counter: RequestCounter, request_stream: bool):
        self._inner, self._method, self._counter = inner, method, counter
        self._request_stream = request_stream

    def __call__(self, request: Any, *args: Any, **kwargs: Any) -> _CountedStreamCall:
        counter, method = self._counter, self._method
        counter.on_call(method)
        if not self._request_stream:
            counter.on_send(method, request)
        elif hasattr(request, "__aiter__"):
            async def counted_async(source=request):
                async for message in source:
                    counter.on_send(method, message)
                    yield message

            request = counted_async()
        else:
            def counted(source=request):
                for message in source:
                    counter.on_send(method, message)
                    yield message

            request = counted()
        return _CountedStreamCall(self._inner(request, *args, **kwargs), method, counter)


class _CountingChannel:
    """Builds stubs whose calls report to a RequestCounter (only used when one is attached)."""

    def __init__(self, channel: Any, counter: RequestCounter):
        self._channel, self._counter = channel, counter

    def unary_unary(self, path: str, *args: Any, **kwargs: Any) -> _CountedUnary:
        return _CountedUnary(self._channel.unary_unary(path, *args, **kwargs), _method_name(path), self._counter)

    def unary_stream(self, path: str, *args: Any, **kwargs: Any) -> _CountedStream:
        inner = self._channel.unary_stream(path, *args, **kwargs)
        return _CountedStream(inner, _method_name(path), self._counter, request_stream=False)

    def stream_unary(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self._channel.stream_unary(path, *args, **kwargs)  # not used by etcd's client API

    def stream_stream(self, path: str, *args: Any, **kwargs: Any) -> _CountedStream:
        inner = self._channel.stream_stream(path, *args, **kwargs)
        return _CountedStream(inner, _method_name(path), self._counter, request_stream=True)


class _Client(AetcdClientBase):
    """aetcd's client with a multi-endpoint target, TLS and client certificates."""

    def __init__(self, settings: EtcdSettings, counter: RequestCounter | None = None):
        self._counter = counter
        self._endpoints = tuple(settings.endpoints)
        self._connect_lock = asyncio.Lock()
        self._target, tls = grpc_target(self._endpoints)
        self._credentials = None
        if tls or settings.cafile or settings.certfile:
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(settings.cafile),
                private_key=_read(settings.keyfile),
                certificate_chain=_read(settings.certfile),
            )
        super().__init__(
            username=settings.username,
            password=settings.password,
            timeout=settings.request_timeout,
            options={
                "grpc.keepalive_time_ms": 10_000,
                "grpc.keepalive_timeout_ms": 5_000,
                # After a network cut heals, reconnect at once: a connection attempt whose SYN
                # was dropped would otherwise wait for TCP's SYN back-off (1 s, 3 s, ...) under
                # gRPC's default 20 s connect timeout, longer than the rest of a short lease.
                "grpc.initial_reconnect_backoff_ms": 100,
                "grpc.min_reconnect_backoff_ms": 500,
                "grpc.max_reconnect_backoff_ms": 500,
            },
        )

    @property
    def credentials(self) -> Any:
        """The TLS channel credentials (None without TLS)."""
        return self._credentials

    @property
    def preferred_endpoint(self) -> str:
        return self._endpoints[0]

    def rotate(self) -> None:
        """Put the preferred endpoint last: the next channel tries another etcd member first."""
        self._endpoints = self._endpoints[1:] + self._endpoints[:1]
        self._target, _ = grpc_target(self._endpoints)

    async def connect(self) -> None:
        if self.is_connected:
            return
        async with self._connect_lock:  # concurrent callers after a failover: one channel
            if not self.is_connected:
                await self._open_channel()

    async def _open_channel(self) -> None:
        options = self.channel_options
        if self._credentials is not None and len(self._endpoints) > 1:
            # A target of several addresses has no single host name, and gRPC checks every
            # member's certificate against the whole list (which nothing matches): check them
            # against the preferred member's host instead, so each member's certificate must
            # name every member (fleetd.pki machine certificates of etcd members do).
            host = urlsplit(self._endpoints[0] if "://" in self._endpoints[0] else f"https://{self._endpoints[0]}").hostname
            options.append(("grpc.ssl_target_name_override", host))
        if self._credentials is not None:
            self.channel = rpc.secure_channel(self._target, self._credentials, options=options)
        else:
            self.channel = rpc.insecure_channel(self._target, options=options)
        stubs = self.channel if self._counter is None else _CountingChannel(self.channel, self._counter)
        username, password = self.credentials_user
        if username:
            auth = rpc.AuthStub(stubs)
            try:
                resp = await auth.Authenticate(
                    rpc.AuthenticateRequest(name=username, password=password),
                    timeout=self.request_timeout,
                )
            except rpc.AioRpcError as exc:
                raise translate(exc) from None
            self.metadata = (("token", resp.token),)
        self.install_stubs(stubs)


class WatchCompacted(RegistryError):
    """The requested start revision was compacted: the watcher must resync from a snapshot."""

    def __init__(self, compact_revision: int):
        super().__init__(f"etcd revision compacted (oldest available {compact_revision}); resync needed")
        self.compact_revision = compact_revision


class _Watch:
    """One `Connection.watch()`: the batches of events its ranges' watches bring, or the error
    that ended them, in one queue; the watch IDs etcd gave it."""

    __slots__ = ("queue", "ids", "closed")

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.ids: list[int] = []
        self.closed = False


class _WatchStream:
    """A connection's gRPC Watch stream, read here and shared by its watches (as etcd's own
    clients do: one stream per connection, not one per watch): each response's events are
    handed to the watch they belong to as one batch. Create requests are answered in order
    (etcd answers every one with `created`, refusals included), so the watch waiting longest
    for its ID gets the next one."""

    def __init__(self, connection: "Connection", generation: int):
        client = connection.client
        self.connection, self.generation = connection, generation
        self.requests: asyncio.Queue = asyncio.Queue()
        self.pending: collections.deque[_Watch] = collections.deque()  # sent, awaiting `created`
        self.watches: dict[int, _Watch] = {}
        self.error: RegistryError | None = None
        self.retired = False  # ended by a failover of the connection
        self.call = client.watchstub.Watch(self._outgoing(), metadata=client.metadata)
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _outgoing(self) -> AsyncIterator[Any]:
        while True:
            yield await self.requests.get()

    def add(self, watch: _Watch, ranges: Sequence[tuple[bytes, bytes]], start_revision: int) -> None:
        for key, end in ranges:
            self.pending.append(watch)
            self.requests.put_nowait(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                key=key, range_end=end, start_revision=start_revision)))

    def remove(self, watch: _Watch) -> None:
        watch.closed = True
        for watch_id in watch.ids:
            if self.watches.pop(watch_id, None) is not None and self.error is None:
                self._cancel(watch_id)
        watch.ids.clear()

    def _cancel(self, watch_id: int) -> None:
        self.requests.put_nowait(rpc.WatchRequest(cancel_request=rpc.WatchCancelRequest(watch_id=watch_id)))

    def _end(self, watch: _Watch, error: RegistryError) -> None:
        """One watch ends with `error` (its other ranges' watches are cancelled)."""
        if not watch.closed:
            watch.queue.put_nowait(error)
        self.remove(watch)

    async def _read(self) -> None:
        endpoints = self.connection.settings.endpoints
        try:
            async for response in self.call:
                if response.created:
                    watch = self.pending.popleft()
                    if response.canceled:  # refused, e.g. no permission for the range
                        self._end(watch, RegistryError(f"etcd refused a watch at {','.join(endpoints)}: "
                                                       f"{response.cancel_reason or 'no reason given'}"))
                    elif watch.closed:
                        self._cancel(response.watch_id)
                    else:
                        self.watches[response.watch_id] = watch
                        watch.ids.append(response.watch_id)
                    continue
                watch = self.watches.get(response.watch_id)
                if watch is None:  # the rest of a cancelled watch
                    continue
                if response.compact_revision:
                    self._end(watch, WatchCompacted(response.compact_revision))
                elif response.canceled:
                    self.watches.pop(response.watch_id, None)
                    self._end(watch, RegistryUnavailable(f"etcd cancelled a watch at {','.join(endpoints)}: "
                                                         f"{response.cancel_reason or 'no reason given'}"))
                elif response.events:
                    watch.queue.put_nowait(response.events)
            error = translate(TimeoutError("watch stream ended"), endpoints)
        except asyncio.CancelledError:
            # the call was cancelled (a failover, the channel closing) or this reader (close())
            reason = f"a reconnect to {self.connection.client.preferred_endpoint}" if self.retired else "its connection closing"
            self._fail(RegistryUnavailable(f"etcd watch ended by {reason}"))
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            return
        except _TRANSLATED as exc:
            error = translate(exc, endpoints)
            if isinstance(error, RegistryUnavailable) and self.pending:
                self.connection.failover(self.generation)  # as a failed call would
        except RegistryError as exc:  # e.g. a create answered with no watch waiting for it
            error = exc
        except IndexError:
            error = RegistryError(f"etcd at {','.join(endpoints)} confirmed a watch nobody asked for")
        self._fail(error)

    def _fail(self, error: RegistryError) -> None:
        self.error = error
        for watch in set(self.watches.values()) | set(self.pending):
            if not watch.closed:
                watch.queue.put_nowait(error)
        self.watches.clear()
        self.pending.clear()

    def close(self) -> None:
        self.call.cancel()
        self.reader.cancel()


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read TLS file: {exc.strerror}") from None


def translate(exc: BaseException, endpoints: tuple[str, ...] = ()) -> RegistryError:
    where = f" at {','.join(endpoints)}" if endpoints else ""
    if isinstance(exc, rpc.AioRpcError):
        code = exc.code()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return RegistryUnavailable(f"etcd unreachable{where}: {exc.details() or code.name}")
        return RegistryError(f"etcd error{where}: {code.name}: {exc.details()}")
    if isinstance(exc, (aetcd.exceptions.ConnectionFailedError, aetcd.exceptions.ConnectionTimeoutError)):
        return RegistryUnavailable(f"etcd unreachable{where}: {exc}")
    if isinstance(exc, aetcd.exceptions.WatchTimeoutError):
        # aetcd raises it without a message when etcd did not confirm a new watch in time
        return RegistryUnavailable(f"etcd did not confirm a watch in time{where}")
    if isinstance(exc, TimeoutError):
        return RegistryUnavailable(f"etcd request timed out{where}")
    if isinstance(exc, aetcd.exceptions.ClientError):
        return RegistryError(f"etcd error{where}: {exc}")
    return RegistryError(f"etcd error{where}: {exc!r}")


_TRANSLATED = (rpc.AioRpcError, aetcd.exceptions.ClientError, TimeoutError)


def raise_if_cancelling(exc: BaseException) -> None:
    """Re-raise a failed call as the CancelledError it is when the calling task is being
    cancelled: grpc.aio may turn the cancellation of the awaiting task into an RPC error
    (CANCELLED, "Locally cancelled by application"); translated into a RegistryError, a loop
    that carries on after registry errors would swallow the cancellation (fleetd's stop, or a
    test's teardown, then waited forever for presence.run())."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from exc


class Connection:
    """An open etcd connection. Every call goes through `call`, which translates errors.

    `counter` (optional) counts every request and its bytes; see RequestCounter.
    """

    def __init__(self, settings: EtcdSettings, counter: RequestCounter | None = None):
        self.settings = settings
        self.counter = counter
        self.client = _Client(settings, counter)
        self._generation = 0  # bumped by every failover
        self._retiring: set[asyncio.Task] = set()
        self._retired_channels: list[Any] = []
        self._watch_stream: _WatchStream | None = None

    async def open(self) -> "Connection":
        try:
            await self.client.connect()
        except _TRANSLATED as exc:
            raise_if_cancelling(exc)
            raise translate(exc, self.settings.endpoints) from None
        return self

    async def close(self) -> None:
        stream, self._watch_stream = self._watch_stream, None
        if stream is not None:
            stream.close()
            await asyncio.gather(stream.reader, return_exceptions=True)
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for channel in self._retired_channels:
            with contextlib.suppress(Exception):
                await channel.close()
        self._retired_channels.clear()
        try:
            await self.client.close()
        except Exception:  # closing a broken channel must not mask the original problem
            pass

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        generation = self._generation
        try:
            return await fn(*args, **kwargs)
        except _TRANSLATED as exc:
            raise_if_cancelling(exc)
            error = translate(exc, self.settings.endpoints)
        if isinstance(error, RegistryUnavailable):
            self.failover(generation)
        raise error

    def failover(self, generation: int) -> None:
        """The etcd member of this connection did not answer: connect to the next one.

        gRPC keeps using a connection whose peer vanished (a partitioned member) until its
        keepalive gives up (15 s here), longer than a machine's lease: every client of that
        member would lose its lease although the other members are fine. So the first failure
        of a connection (`generation` is the one the failed call used) moves on at once: new
        calls open a channel preferring the next endpoint; the old channel's watches end now
        (their readers watch again, on the new channel) and the channel itself is closed once
        its last calls have timed out.
        """
        if generation != self._generation or len(self.settings.endpoints) < 2:
            return
        self._generation += 1
        client = self.client
        old_channel, old_watcher = client.channel, client.current_watcher
        client.rotate()
        client.drop_channel()
        log.warning("etcd did not answer; reconnecting to %s first", client.preferred_endpoint)
        if old_channel is not None:
            self._retired_channels.append(old_channel)
        if self._watch_stream is not None:
            self._watch_stream.retired = True
            self._watch_stream.close()
            self._watch_stream = None
        task = asyncio.get_running_loop().create_task(self._retire(old_channel, old_watcher))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, channel: Any, watcher: Any) -> None:
        if watcher is not None:
            with contextlib.suppress(Exception):
                await watcher.shutdown()
        await asyncio.sleep((self.settings.request_timeout or 1.0) + 1.0)
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()
            with contextlib.suppress(ValueError):
                self._retired_channels.remove(channel)

    async def watch(self, ranges: Sequence[tuple[bytes, bytes]], start_revision: int) -> AsyncIterator[Any]:
        """Watch the key ranges [key, range_end) from `start_revision` on (inclusive) on this
        connection's watch stream (_WatchStream): yields the events of each etcd response as
        they come (etcd's Event messages, one sequence per response), until closed.

        Raises WatchCompacted if etcd compacted a revision still to be sent, RegistryUnavailable
        when the stream is lost (etcd gone, a failover of this connection, the connection
        closing), RegistryError for other errors. Closing the generator cancels its watches.
        """
        client = self.client
        generation = self._generation
        try:
            await client.connect()
        except _TRANSLATED as exc:
            raise_if_cancelling(exc)
            error = translate(exc, self.settings.endpoints)
            if isinstance(error, RegistryUnavailable):
                self.failover(generation)
            raise error from None
        stream = self._watch_stream
        if stream is None or stream.error is not None or stream.generation != self._generation:
            stream = self._watch_stream = _WatchStream(self, self._generation)
        watch = _Watch()
        stream.add(watch, ranges, start_revision)
        try:
            while True:
                item = await watch.queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stream.remove(watch)

    async def lease_keepalive(self, lease_id: int, timeout: float | None = None) -> Any:
        """One LeaseKeepAlive round trip, within `timeout` seconds (default: the request timeout)."""
        client = self.client
        await client.connect()
        async for reply in client.leasestub.LeaseKeepAlive(
            [rpc.LeaseKeepAliveRequest(ID=lease_id)],
            timeout=client.request_timeout if timeout is None else timeout,
            metadata=client.metadata,
        ):
            return reply
        return None

    async def lease_keepalive_direct(self, endpoint: str, lease_id: int, timeout: float) -> Any:
        """One LeaseKeepAlive round trip to one etcd member, on a channel (a TCP connection)
        of its own that is closed afterwards; errors are translated.

        For a machine whose lease is at stake: right after a network cut heals, an existing
        connection may still wait for TCP's retransmission back-off (up to seconds), and the
        shared channel may be between connection attempts; a new connection gets through at
        once. Uses the shared channel's credentials and auth token (no token yet: none).
        """
        client = self.client
        target, _ = grpc_target((endpoint,))
        options = client.channel_options
        if client.credentials is not None:
            channel = rpc.secure_channel(target, client.credentials, options=options)
        else:
            channel = rpc.insecure_channel(target, options=options)
        try:
            stubs = channel if self.counter is None else _CountingChannel(channel, self.counter)
            async for reply in rpc.LeaseStub(stubs).LeaseKeepAlive(
                [rpc.LeaseKeepAliveRequest(ID=lease_id)], timeout=timeout, metadata=client.metadata,
            ):
                return reply
            return None
        except _TRANSLATED as exc:
            raise_if_cancelling(exc)
            raise translate(exc, (endpoint,)) from None
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def txn(self, compare: list, success: list, failure: list) -> tuple[bool, list, int]:
        """A transaction that also returns the revision it was served at (aetcd drops it).

        The result of a range operation is its sequence of KeyValue messages (not copied);
        any other operation's result is its ResponseOp.
        """
        client = self.client
        await client.connect()
        request = rpc.TxnRequest(compare=[c.build_message() for c in compare])
        _add_requests(client, request.success, success)
        _add_requests(client, request.failure, failure)
        response = await client.kvstub.Txn(request, timeout=client.request_timeout, metadata=client.metadata)
        results: list = []
        for item in response.responses:
            kind = item.WhichOneof("response")
            results.append(item.response_range.kvs if kind == "response_range" else item)
        return response.succeeded, results, response.header.revision

    @property
    def tx(self) -> Any:
        return self.client.transactions


class PutOp(tuple):
    """A transaction operation writing `value` under `key` (no lease): what aetcd's `tx.put`
    does, written into the transaction's message in place when it is sent, in about a fifth
    of the time of building aetcd's operation and its RequestOp and copying that into the
    request (the engine writes a placement per unit of a burst, a submission two keys per
    unit)."""

    __slots__ = ()

    def __new__(cls, key: bytes, value: bytes) -> "PutOp":
        return tuple.__new__(cls, (key, value))


def _add_requests(client: Any, field: Any, ops: Sequence[Any]) -> None:
    """Append transaction operations to a TxnRequest's success or failure list, in order:
    PutOps written in place, aetcd's builds (tx.put, tx.get, ...) converted."""
    pending: list[Any] = []   # aetcd operations in a row
    for op in ops:
        if type(op) is PutOp:
            if pending:
                field.extend(client.ops_to_requests(pending))
                pending = []
            put = field.add().request_put
            put.key, put.value = op
        else:
            pending.append(op)
    if pending:
        field.extend(client.ops_to_requests(pending))


def enc(text: str) -> bytes:
    return text.encode()


@functools.lru_cache(maxsize=None)
def prefix_end(prefix: bytes) -> bytes:
    return aetcd.utils.prefix_range_end(prefix)
