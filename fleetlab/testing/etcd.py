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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class EtcdServer:
    """`with EtcdServer() as etcd: etcd.endpoint` — a single-member etcd in a temporary dir."""

    binary: str = "etcd"
    host: str = "127.0.0.1"
    extra_args: tuple[str, ...] = ()
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
        self.client_port = self.client_port or free_port(self.host)
        self.peer_port = self.peer_port or free_port(self.host)
        peer = f"http://{self.host}:{self.peer_port}"
        self._log = open(self.data_dir / "etcd.log", "wb")
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
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.process.returncode}: {self.log_tail()}")
            if self._healthy():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy in {timeout}s: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.data_dir / "etcd.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): clients see an unresponsive etcd."""
        import signal

        self.process.send_signal(signal.SIGSTOP)

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
