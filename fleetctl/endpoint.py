"""Where fleet's API is (fleetctl --endpoint with the API driver), and HTTP over a unix socket."""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from fleetd.errors import ConfigError

UNIX_HOST = "domain-sock"  # fleetctl's Host header over a unix socket


@dataclass(frozen=True)
class Endpoint:
    """Where the API is: a unix socket path, or a base URL."""

    display: str
    unix_path: str | None = None
    base_url: str = f"http://{UNIX_HOST}"


def parse_endpoint(text: str) -> Endpoint:
    """fleetctl's --endpoint for the API driver (only the first of a comma-separated list)."""
    first = text.split(",")[0].strip()
    if not first:
        raise ConfigError("--endpoint: empty endpoint")
    if first.startswith("unix://"):
        path = first[len("unix://"):]
        if not path.startswith("/"):
            raise ConfigError(f"--endpoint {first}: expected unix:///absolute/path")
        return Endpoint(first, unix_path=path)
    if first.startswith("/"):
        return Endpoint(f"unix://{first}", unix_path=first)
    if "://" not in first:
        first = f"http://{first}"
    url = urlsplit(first)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"--endpoint {text}: expected unix:///path, http(s)://host:port or host:port")
    return Endpoint(first, base_url=f"{url.scheme}://{url.netloc}{url.path.rstrip('/')}")


class UnixConnection(http.client.HTTPConnection):
    """http.client over a unix socket (fleetd's /var/run/fleet.sock)."""

    def __init__(self, path: str, timeout: float | None):
        super().__init__(UNIX_HOST, timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock
