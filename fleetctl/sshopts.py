"""fleetctl's SSH options (the global --ssh-*/--tunnel flags): light, for every command's
start-up; running `ssh` is fleetctl/ssh.py, imported only by the commands that do."""

from __future__ import annotations

from dataclasses import dataclass

from fleetd.errors import FleetError

DEFAULT_KNOWN_HOSTS = "~/.fleetctl/known_hosts"


class SshError(FleetError):
    """The ssh client is missing or an SSH connection/tunnel failed."""


@dataclass(frozen=True)
class SshOptions:
    username: str = "core"
    timeout: float = 10.0
    strict_host_key_checking: bool = True
    known_hosts_file: str = DEFAULT_KNOWN_HOSTS
    tunnel: str = ""  # bastion host[:port]

    def tunnel_hostport(self) -> tuple[str, int] | None:
        """fleet's getTunnelFlag: ":22" is appended when no port is given."""
        if not self.tunnel:
            return None
        host, port = split_hostport(self.tunnel, 22)
        return host, port


def split_hostport(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise SshError(f"invalid port in {text!r}") from None
