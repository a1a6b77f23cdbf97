"""fleetd.registry.connection.translate: which failures of etcd's client mean "etcd is
unreachable" (RegistryUnavailable: callers wait and retry, fail over, or hold) and which are
errors of the request (RegistryError), each with a message that says what happened."""

from __future__ import annotations

import aetcd.exceptions
import pytest

from fleetd.errors import RegistryError, RegistryUnavailable
from fleetd.registry.connection import translate

ENDPOINTS = ("http://10.0.0.1:2379",)


@pytest.mark.parametrize("exc, unavailable, words", [
    (aetcd.exceptions.ConnectionFailedError("connection refused"), True, "unreachable"),
    (aetcd.exceptions.ConnectionTimeoutError("deadline"), True, "unreachable"),
    (TimeoutError(), True, "timed out"),
    # aetcd raises it bare when etcd does not confirm a new watch in time (seen under load in
    # test_registry's failover test: an empty "etcd error at ...: " instead of unreachable)
    (aetcd.exceptions.WatchTimeoutError(), True, "watch in time"),
    (aetcd.exceptions.InvalidArgumentError("bad range"), False, "bad range"),
    (ValueError("odd"), False, "odd"),
])
def test_translate(exc, unavailable, words):
    error = translate(exc, ENDPOINTS)
    assert isinstance(error, RegistryError)
    assert isinstance(error, RegistryUnavailable) == unavailable
    assert words in str(error) and ENDPOINTS[0] in str(error)
