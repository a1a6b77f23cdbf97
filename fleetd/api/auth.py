"""Authorization on the fleet API: who may read, who may change the cluster.

Two roles:

* ``read-only``: GET (and HEAD) on every route: list units, unit files, states, machines,
  ``status``, ``journal``, discovery, /metrics.
* ``operator``: everything else as well (PUT/DELETE units: submit, start, stop, destroy;
  PATCH machines: metadata, drain).

A request's role comes from how it arrived:

* **TCP with TLS** (client certificates required): the certificate's subject O, as
  `fleetctl pki issue client NAME --role ROLE` writes it: ``O=operator`` is an operator;
  ``O=read-only``, ``O=machine`` (another fleetd relaying status/journal) and a certificate
  without a known role read only.
* **The unix socket**: the peer's credentials (SO_PEERCRED): uid 0 and members of
  ``api_socket_group`` (primary or supplementary group) are operators; any other user who can
  connect (the socket is mode 0660: only if its mode was widened) reads only.
* **TCP without TLS** (``api_insecure_tcp``, labs with ``--insecure``): no identity at all,
  so everyone has the role ``api_tcp_role`` names (default operator). That is what "insecure"
  means.

A request beyond its role gets ``403`` with fleet's error envelope before anything else is
looked at (route, body, unit): a read-only client learns nothing from a refused request.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from aiohttp import web

OPERATOR = "operator"
READ_ONLY = "read-only"
READ_METHODS = frozenset({"GET", "HEAD"})
_ROLE_OF_ORG = {"operator": OPERATOR, "read-only": READ_ONLY, "machine": READ_ONLY}


@dataclass(frozen=True)
class Identity:
    """Who sent a request: how (``tls``, ``unix``, ``insecure``), a name for logs, the role."""

    via: str
    name: str
    role: str


# the key of a request's Identity (set by the API's middleware); aiohttp's typed request key
IDENTITY = getattr(web, "RequestKey", lambda name, _type: name)("fleet_identity", Identity)


def role_allows(role: str, method: str) -> bool:
    """Pure: may `role` use `method` (on any route)?"""
    return role == OPERATOR or (role == READ_ONLY and method.upper() in READ_METHODS)


def forbidden_message(identity: Identity, method: str) -> str:
    return (f"forbidden: {identity.name} has role {identity.role}, which may not {method.upper()} "
            f"(operators only)")


def role_of_subject(subject: Sequence[Any] | None) -> tuple[str, str]:
    """(name, role) from ssl's getpeercert()['subject']: CN and the role named by O."""
    fields: dict[str, str] = {}
    for rdn in subject or ():
        for key, value in rdn:
            fields.setdefault(key, value)
    name = fields.get("commonName", "?")
    return f"certificate CN={name}", _ROLE_OF_ORG.get(fields.get("organizationName", ""), READ_ONLY)


def role_of_peer(uid: int, gid: int, operator_group: str) -> str:
    """Role of a unix-socket peer: root and members of `operator_group` operate, others read."""
    if uid == 0:
        return OPERATOR
    if not operator_group:
        return READ_ONLY
    try:
        group = grp.getgrnam(operator_group)
    except KeyError:
        return READ_ONLY
    if gid == group.gr_gid:
        return OPERATOR
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return READ_ONLY
    groups = set(group.gr_mem)
    if user.pw_name in groups or group.gr_gid in _group_list(user.pw_name, user.pw_gid):
        return OPERATOR
    return READ_ONLY


def _group_list(name: str, gid: int) -> list[int]:
    try:
        return os.getgrouplist(name, gid)
    except OSError:
        return [gid]


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of a unix-socket peer (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


def identify(transport: Any, config: Any) -> Identity:
    """The identity of the connection behind an aiohttp request's transport (`config`: the
    FleetConfig: api_socket_group, api_tcp_role)."""
    operator_group = config.api_socket_group
    if transport is None:
        return Identity("none", "unknown peer", READ_ONLY)
    peercert: Mapping | None = transport.get_extra_info("peercert")
    if transport.get_extra_info("sslcontext") is not None or peercert:
        name, role = role_of_subject((peercert or {}).get("subject"))
        return Identity("tls", name, role)
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            pid, uid, gid = peer_credentials(sock)
        except OSError:
            return Identity("unix", "unknown unix peer", READ_ONLY)
        return Identity("unix", f"uid {uid} (pid {pid})", role_of_peer(uid, gid, operator_group))
    return Identity("insecure", "plaintext TCP client", READ_ONLY if config.api_tcp_role == READ_ONLY else OPERATOR)
