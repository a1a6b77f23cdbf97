"""Who may change the cluster through the HTTP API: the role of a request.

    request_role(request) -> "operator" | "read-only"

The role is fleetd.api.auth's: a TLS client certificate's O, the unix socket peer's uid/groups,
and for plaintext TCP (api_insecure_tcp) `api_tcp_role` (default operator; fleetd refuses any
other value than a role at start).
"""

from __future__ import annotations

from aiohttp import web

from fleetd.api.auth import IDENTITY, OPERATOR, READ_ONLY, identify
from fleetd.api.context import HttpError, ctx_of



def request_role(request: web.Request) -> str:
    """The role fleetd.api.auth gave the request (the API's middleware identifies every one)."""
    identity = request.get(IDENTITY)
    if identity is None:
        identity = identify(request.transport, ctx_of(request).config)
    return identity.role


def require_operator(request: web.Request) -> None:
    """Refuse (403, fleet's error envelope) a request that is not an operator's."""
    role = request_role(request)
    if role != OPERATOR:
        raise HttpError(403, f"forbidden: this client's role is {role}; changing the cluster needs the {OPERATOR} role")
