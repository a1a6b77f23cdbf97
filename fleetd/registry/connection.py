"""The etcd connection: endpoints, TLS, auth, timeouts and error translation over aetcd."""

from __future__ import annotations

import functools
import ipaddress
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar
from urllib.parse import urlsplit

import aetcd
import aetcd.exceptions
import grpc
from aetcd import rpc

from fleetd.config import EtcdSettings
from fleetd.errors import ConfigError, RegistryError, RegistryUnavailable

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


class _Client(aetcd.Client):
    """aetcd's client with a multi-endpoint target, TLS and client certificates."""

    def __init__(self, settings: EtcdSettings):
        self._target, tls = grpc_target(settings.endpoints)
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
                "grpc.initial_reconnect_backoff_ms": 200,
                "grpc.max_reconnect_backoff_ms": 2_000,
            },
        )

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        options = list(self._options.items())
        if self._credentials is not None:
            self.channel = rpc.secure_channel(self._target, self._credentials, options=options)
        else:
            self.channel = rpc.insecure_channel(self._target, options=options)
        if self._username:
            auth = rpc.AuthStub(self.channel)
            try:
                resp = await auth.Authenticate(
                    rpc.AuthenticateRequest(name=self._username, password=self._password),
                    timeout=self._timeout,
                )
            except rpc.AioRpcError as exc:
                raise translate(exc) from None
            self.metadata = (("token", resp.token),)
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        from aetcd import watcher

        self._watcher = watcher.Watcher(rpc.WatchStub(self.channel), timeout=None, metadata=self.metadata)
        self._connected.set()


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
    if isinstance(exc, TimeoutError):
        return RegistryUnavailable(f"etcd request timed out{where}")
    if isinstance(exc, aetcd.exceptions.ClientError):
        return RegistryError(f"etcd error{where}: {exc}")
    return RegistryError(f"etcd error{where}: {exc!r}")


_TRANSLATED = (rpc.AioRpcError, aetcd.exceptions.ClientError, TimeoutError)


class Connection:
    """An open etcd connection. Every call goes through `call`, which translates errors."""

    def __init__(self, settings: EtcdSettings):
        self.settings = settings
        self.client = _Client(settings)

    async def open(self) -> "Connection":
        try:
            await self.client.connect()
        except _TRANSLATED as exc:
            raise translate(exc, self.settings.endpoints) from None
        return self

    async def close(self) -> None:
        try:
            await self.client.close()
        except Exception:  # closing a broken channel must not mask the original problem
            pass

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        try:
            return await fn(*args, **kwargs)
        except _TRANSLATED as exc:
            raise translate(exc, self.settings.endpoints) from None

    async def txn(self, compare: list, success: list, failure: list) -> tuple[bool, list, int]:
        """A transaction that also returns the revision it was served at (aetcd drops it)."""
        client = self.client
        await client.connect()
        request = rpc.TxnRequest(
            compare=[c.build_message() for c in compare],
            success=client._ops_to_requests(success),
            failure=client._ops_to_requests(failure),
        )
        response = await client.kvstub.Txn(request, timeout=client._timeout, metadata=client.metadata)
        results: list = []
        for item in response.responses:
            kind = item.WhichOneof("response")
            if kind == "response_range":
                results.append([(kv.value, kv) for kv in item.response_range.kvs])
            else:
                results.append(item)
        return response.succeeded, results, response.header.revision

    @property
    def tx(self) -> Any:
        return self.client.transactions


def enc(text: str) -> bytes:
    return text.encode()


@functools.lru_cache(maxsize=None)
def prefix_end(prefix: bytes) -> bytes:
    return aetcd.utils.prefix_range_end(prefix)
