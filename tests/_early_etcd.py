"""etcd servers started before a test asks for them, in a thread, so that their start (0.25-0.6 s
of wall each, 0.1 CPU-s) overlaps with other work: in a pytest-xdist worker, the worker's session
etcd and a first spare for `own_etcd` start while the worker collects (tests/conftest.py), and each
`own_etcd` test leaves a new spare starting at its teardown for the next one (tests/etcd/conftest.py;
most of them are in the modules that wait, the fast loop's longest lanes). Whatever no test took
is stopped at the end of the session."""

from __future__ import annotations

import threading

from fleetlab.testing.etcd import EtcdServer


class EarlyEtcd:
    def __init__(self) -> None:
        self.server = EtcdServer()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._start, name="early-etcd", daemon=True)
        self.thread.start()

    def _start(self) -> None:
        try:
            self.server.start()
        except BaseException as exc:  # re-raised in the test that takes the server
            self.error = exc

    def take(self) -> EtcdServer:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.server


#: started and not taken yet, by use: "session" (the worker's etcd_server), "own" (own_etcd)
_started: dict[str, EarlyEtcd] = {}


def start(use: str) -> None:
    if use not in _started:
        _started[use] = EarlyEtcd()


def take(use: str) -> EtcdServer | None:
    """The server started early for `use`, once it is ready; None when none was started."""
    early = _started.pop(use, None)
    return early.take() if early is not None else None


def stop_untaken() -> None:
    while _started:
        early = _started.pop(next(iter(_started)))
        early.thread.join()
        early.server.stop()
