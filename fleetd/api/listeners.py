"""Sockets the API is served on: systemd socket activation, the unix socket, TCP, and TLS."""

from __future__ import annotations

import errno
import grp
import ipaddress
import os
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import MutableMapping

from fleetd.errors import ConfigError

SD_LISTEN_FDS_START = 3


@dataclass
class Listener:
    sock: socket.socket
    kind: str  # "unix" or "tcp"
    address: str  # socket path, or host:port
    owned_path: Path | None = None  # a socket file we created (removed on stop)
    activated: bool = False


def systemd_listeners(environ: MutableMapping[str, str] | None = None) -> list[Listener]:
    """Sockets passed by systemd (LISTEN_PID/LISTEN_FDS, sd_listen_fds(unset=1))."""
    env = os.environ if environ is None else environ
    try:
        pid = int(env.get("LISTEN_PID", "0"))
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    if pid != os.getpid() or count <= 0:
        return []
    listeners = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        if sock.family == socket.AF_UNIX:
            listeners.append(Listener(sock, "unix", str(sock.getsockname()), activated=True))
        else:
            host, port = sock.getsockname()[:2]
            listeners.append(Listener(sock, "tcp", format_hostport(host, port), activated=True))
    return listeners


def _in_use(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def unix_listener(path: str | Path, mode: int = 0o660, group: str = "") -> Listener:
    """Bind the API's unix socket: a stale file is replaced, a live one (another fleetd) refused."""
    path = Path(path)
    gid = -1
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"api_socket_group: no such group {group!r}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ConfigError(f"api_socket {path}: exists and is not a socket; refusing to replace it")
        if _in_use(path):
            raise ConfigError(f"api_socket {path}: another process (fleetd?) is already serving it")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)  # never world-accessible, even for an instant
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        if gid != -1:
            os.chown(path, -1, gid)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"api_socket {path}: {exc.strerror}") from None
    return Listener(sock, "unix", str(path), owned_path=path)


def parse_hostport(text: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all addresses)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep:
        raise ConfigError(f"api_tcp: expected host:port, got {text!r}")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"api_tcp: invalid port in {text!r}") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"api_tcp: port out of range in {text!r}")
    return host, number


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tcp_listener(address: str) -> Listener:
    host, port = parse_hostport(address)
    family = socket.AF_INET
    if host:
        try:
            if ipaddress.ip_address(host).version == 6:
                family = socket.AF_INET6
        except ValueError:
            raise ConfigError(f"api_tcp: {host!r} is not an IP address") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        why = "address in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise ConfigError(f"api_tcp {address}: cannot listen: {why}") from None
    bound_host, bound_port = sock.getsockname()[:2]
    return Listener(sock, "tcp", format_hostport(bound_host, bound_port))


def _load(ctx: ssl.SSLContext, cafile: str, certfile: str, keyfile: str, what: str) -> None:
    for key, value in (("cafile", cafile), ("certfile", certfile), ("keyfile", keyfile)):
        if not Path(value).is_file():
            raise ConfigError(f"{what}_{key} {value}: no such file")
    try:
        ctx.load_verify_locations(cafile=cafile)
        ctx.load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{what}: cannot load TLS files ({certfile}, {keyfile}, CA {cafile}): {exc}") from None


def server_ssl_context(cafile: str, certfile: str, keyfile: str) -> ssl.SSLContext:
    """TLS for the TCP API: our certificate, and a client certificate signed by cafile required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load(ctx, cafile, certfile, keyfile, "api")
    return ctx
