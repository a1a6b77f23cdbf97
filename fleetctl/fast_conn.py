"""Connections of fleetctl's fast paths to the fleet API (fleetctl/fast_http.py): a unix
socket, plain http, or https with the standard library's ssl configured as the full CLI's API
client (fleetd.wire.client_ssl_context), imported only for https."""

from __future__ import annotations

from fleetctl import lean


class NotFast(Exception):
    """This command line or answer is for the full CLI."""


def connect(opts: dict, timeout: float):
    """A connection to the API (OSError if it cannot be made): a lean.Socket (the socket
    module, which imports re and enum, only for https)."""
    if "unix" in opts:
        return lean.connect_unix(opts["unix"], timeout)
    host, port = opts["tcp"]
    if host.isascii():  # as bytes: getaddrinfo of a str imports the idna codec (5-13 ms under load)
        host = host.encode()
    if not opts.get("tls"):
        return lean.create_connection((host, port), timeout)
    import socket
    import ssl  # https only: not on the unix socket's or plain http's path

    sock = socket.create_connection((host, port), timeout=timeout)

    try:
        return _tls_context(opts).wrap_socket(sock)
    except (ssl.SSLError, ConnectionError):
        sock.close()
        raise NotFast() from None  # a failed handshake is the full CLI's to report, in its words
    except BaseException:
        sock.close()
        raise


def _tls_context(opts: dict):
    """fleetd.wire.client_ssl_context, as the full CLI's API client makes it: the server signed
    by --ca-file (the system's CAs without one), TLS 1.2 or later, no host name check (machines
    are addressed by IP and trusted by the cluster CA), our certificate if given. Files it
    cannot load: NotFast (the full CLI's one-line error)."""
    if "tls_context" not in opts:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            if opts.get("ca_file"):
                ctx.load_verify_locations(cafile=opts["ca_file"])
            else:
                ctx.load_default_certs()
            if opts.get("cert_file"):
                ctx.load_cert_chain(opts["cert_file"], opts.get("key_file") or None)
        except (ssl.SSLError, OSError):
            raise NotFast() from None
        opts["tls_context"] = ctx
    return opts["tls_context"]

