"""`fleetctl fd-forward SOCKET`: copy stdin to a unix socket and the socket to stdout.

fleet runs it on the far side of `--tunnel` (`ssh host fleetctl fd-forward /var/run/fleet.sock`)
to reach the API's unix socket through SSH without port forwarding.
"""

from __future__ import annotations

import os
import socket
import threading


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def forward(path: str, stdin_fd: int = 0, stdout_fd: int = 1) -> int:
    """Returns 0 when both directions are closed; raises OSError if the socket cannot be reached."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)

    def upstream() -> None:
        # Like fleet's fd-forward, stdin's end does not half-close the socket (HTTP servers may
        # drop a half-closed connection before answering): we stop when the socket closes.
        try:
            while data := os.read(stdin_fd, 65536):
                sock.sendall(data)
        except OSError:
            pass

    threading.Thread(target=upstream, daemon=True).start()
    try:
        while data := sock.recv(65536):
            _write_all(stdout_fd, data)
    finally:
        sock.close()
    return 0
