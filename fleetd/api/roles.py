"""Who may change the cluster through the HTTP API: the role of a request.

    request_role(request) -> "operator" | "read-only"

Today: a client on the unix socket (guarded by its file mode and group) is an operator; a TCP
client is an operator unless fleet.conf says `api_tcp_role=read-only` (fleetd refuses any
other value at start; should one get through, it means read-only). Binding roles to TLS client
certificates and unix-socket peer credentials replaces the body of request_role; its callers
(the dashboard's pages and action routes) stay as they are.
"""

from __future__ import annotations

from aiohttp import web

from fleetd.api.context import HttpError, ctx_of
from fleetd.config import FleetConfig
from fleetd.errors import ConfigError

OPERATOR = "operator"
READ_ONLY = "read-only"
ROLES = (OPERATOR, READ_ONLY)


def check_config(config: FleetConfig) -> None:
    """Refuse an api_tcp_role that names no role (fleetd then exits with this one line)."""
    value = getattr(config, "api_tcp_role", OPERATOR)
    if value not in ROLES:
        raise ConfigError(f"api_tcp_role: {value!r} is not a role (expected {' or '.join(ROLES)})")


def via_unix_socket(request: web.Request) -> bool:
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    return isinstance(sockname, (str, bytes))  # TCP socket names are (host, port) tuples


def request_role(request: web.Request) -> str:
    if via_unix_socket(request):
        return OPERATOR
    configured = getattr(ctx_of(request).config, "api_tcp_role", OPERATOR)
    return OPERATOR if configured == OPERATOR else READ_ONLY


def require_operator(request: web.Request) -> None:
    """Refuse (403, fleet's error envelope) a request that is not an operator's."""
    role = request_role(request)
    if role != OPERATOR:
        raise HttpError(403, f"forbidden: this client's role is {role}; changing the cluster needs the {OPERATOR} role")
