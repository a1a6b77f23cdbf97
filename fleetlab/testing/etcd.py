"""Start a real, throw-away etcd server on free loopback ports (tests, benchmarks, demos)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

#: where a server without a `data_dir` makes its temporary one when this variable names a folder
#: (tests/conftest.py: a tmpfs, /dev/shm, as etcd 3.4 has no --unsafe-no-fsync: a server starts in
#: 0.2 s instead of 1 s on disk); otherwise the system's temporary folder
DATA_PARENT_ENV = "FLEET_ETCD_DATA_PARENT"

#: how many times a server whose picked ports were taken before it bound them picks new ones
_PORT_ATTEMPTS = 5


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _listening_inodes(port: int) -> set[str]:
    """The socket inodes listening on TCP `port` (any address), from /proc/net/tcp{,6}."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is ADDR:PORT in hex; state 0A is LISTEN; the inode is the 10th field
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` holds a socket listening on TCP `port`.

    A port picked by `free_port` is free only until someone binds it: another test's or
    benchmark's etcd may take it first, and a health check on the port then gets that server's
    answer (seen: a test paused its own etcd, which had failed to bind, and the other server kept
    answering). Linux only (/proc), like the rest of the lab."""
    inodes = _listening_inodes(port)
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


@dataclass
class EtcdServer:
    """`with EtcdServer() as etcd: etcd.endpoint` — a single-member etcd in a temporary dir."""

    binary: str = "etcd"
    host: str = "127.0.0.1"
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] | None = None  # added to the inherited environment (e.g. GOGC)
    # (ca, cert, key) files: clients must use https and present a certificate signed by ca
    tls: tuple[str, str, str] | None = None
    client_port: int = 0
    peer_port: int = 0
    data_dir: Path | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    _own_dir: bool = False

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.client_port}"

    def _tls_args(self) -> list[str]:
        if not self.tls:
            return []
        ca, cert, key = self.tls
        return ["--trusted-ca-file", ca, "--cert-file", cert, "--key-file", key, "--client-cert-auth"]

    def _healthy(self) -> bool:
        if self.tls:
            # a TLS member asks for client certificates: ask etcdctl, which has them
            ca, cert, key = self.tls
            probe = subprocess.run(
                ["etcdctl", "--endpoints", self.endpoint, "--cacert", ca, "--cert", cert, "--key", key,
                 "--command-timeout=1s", "endpoint", "health"],
                env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
            return probe.returncode == 0
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as resp:
                return b"true" in resp.read()
        except OSError:
            return False

    def start(self, timeout: float = 20.0) -> "EtcdServer":
        exe = shutil.which(self.binary) or (self.binary if Path(self.binary).exists() else None)
        if exe is None:
            raise RuntimeError(f"etcd binary {self.binary!r} not found (apt-get install etcd-server)")
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="fleet-etcd-", dir=os.environ.get(DATA_PARENT_ENV) or None))
            self._own_dir = True
        # ports we picked ourselves may be taken by another server between the pick and etcd's
        # bind: then etcd exits ("address already in use") and we pick again; given ports are kept
        picked = (not self.client_port, not self.peer_port)
        deadline = time.monotonic() + timeout
        for attempt in range(_PORT_ATTEMPTS):
            if picked[0]:
                self.client_port = free_port(self.host)
            if picked[1]:
                self.peer_port = free_port(self.host)
            self._spawn(exe)
            outcome = self._wait_ready(deadline)
            if outcome == "ready":
                return self
            if outcome == "port taken" and any(picked) and attempt + 1 < _PORT_ATTEMPTS:
                shutil.rmtree(self.data_dir / "data", ignore_errors=True)
                continue
            if outcome == "timeout":
                message = f"etcd did not become healthy in {timeout}s: {self.log_tail()}"
            else:
                message = f"etcd exited with {self.process.returncode}: {self.log_tail()}"
            self.stop()
            raise RuntimeError(message)
        raise AssertionError("the last attempt returns or raises")

    def _spawn(self, exe: str) -> None:
        peer = f"http://{self.host}:{self.peer_port}"
        if getattr(self, "_log", None):
            self._log.close()
        self._log = open(self.data_dir / "etcd.log", "wb")  # this attempt's log only
        self.process = subprocess.Popen(
            [
                exe,
                "--name", "default",
                "--data-dir", str(self.data_dir / "data"),
                "--listen-client-urls", self.endpoint,
                "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"default={peer}",
                "--log-level", "warn",
                *self._tls_args(),
                *self.extra_args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **self.env} if self.env else None,
        )

    def _wait_ready(self, deadline: float) -> str:
        """"ready" once our own process listens on the client port and answers healthy; "port
        taken" or "exited" when it ended first; "timeout" at the deadline."""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return "port taken" if "address already in use" in self.log_tail() else "exited"
            if listens_on(self.process.pid, self.client_port) and self._healthy():
                return "ready"
            time.sleep(0.05)
        return "timeout"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.data_dir / "etcd.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): clients see an unresponsive etcd. Returns once every
        thread of etcd is stopped: SIGSTOP only takes effect when a thread of etcd next runs,
        and on a loaded machine the others answered requests sent after `kill` returned
        (a test's keep-alive "sent to a frozen etcd" was answered)."""
        import signal

        self.process.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 30
        while not _all_threads_stopped(self.process.pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd (pid {self.process.pid}) did not stop within 30s of SIGSTOP")
            time.sleep(0.002)

    def resume(self) -> None:
        import signal

        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()
        if self._own_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "EtcdServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _all_threads_stopped(pid: int) -> bool:
    """Every thread of process `pid` is stopped (state T in /proc/PID/task/*/stat), or gone."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                state = stat.read().rpartition(")")[2].split()[0]
        except (FileNotFoundError, IndexError):
            continue
        if state not in ("T", "t", "Z", "X"):
            return False
    return True
