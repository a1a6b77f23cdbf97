"""`fleetctl pki init|issue|show`: the cluster PKI (fleetd.pki) from the command line.

Works offline on a directory; it never talks to the cluster. Loaded lazily (fleetctl/commands/__init__.py).
"""

from __future__ import annotations

import sys

import click

from fleetd.pki import CLIENT_ROLES, ROLE_OPERATOR, ClusterPKI, PKIError, role_of

DEFAULT_DIR = "/etc/fleet/pki"


def _fail(exc: Exception) -> None:
    click.echo(f"Error: {exc}", err=True)
    sys.exit(1)


@click.group("pki")
def pki() -> None:
    """Make the cluster's CA and certificates (with `cryptography`, offline).

    \b
    fleetctl pki init --dir DIR                       a CA (kept if it exists)
    fleetctl pki issue machine NAME --ip IP [--ip IP]  a node: fleet API, etcd, image server
    fleetctl pki issue client NAME --role ROLE         a user: operator or read-only
    fleetctl pki show NAME                             subject, role, SANs, expiry

    Keys are written with mode 0600. Exit status 0, or 1 with a one-line error.
    """


_dir_option = click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True,
                           envvar="FLEETCTL_PKI_DIR", help="The PKI directory (ca.pem, ca.key, NAME.pem, NAME.key).")


@pki.command("init")
@_dir_option
@click.option("--common-name", default="fleet cluster CA", show_default=True, help="The CA's CN.")
def pki_init(directory: str, common_name: str) -> None:
    """Create the cluster CA in --dir (idempotent: an existing CA is kept)."""
    try:
        created = ClusterPKI(directory).init(common_name)
    except PKIError as exc:
        _fail(exc)
    click.echo(f"{'created' if created else 'kept existing'} CA {directory}/ca.pem")


@pki.group("issue")
def pki_issue() -> None:
    """Issue a machine or client certificate signed by the cluster CA."""


@pki_issue.command("machine")
@_dir_option
@click.argument("name")
@click.option("--ip", "ips", multiple=True, help="An IP address the machine serves on (repeatable).")
@click.option("--dns", "dns", multiple=True, help="A DNS name the machine serves on (repeatable).")
@click.option("--force", is_flag=True, help="Issue again over an existing certificate.")
def pki_issue_machine(directory: str, name: str, ips: tuple[str, ...], dns: tuple[str, ...], force: bool) -> None:
    """A node's certificate (server and client auth, O=machine)."""
    try:
        out = ClusterPKI(directory).machine(name, ips, dns, force=force)
    except PKIError as exc:
        _fail(exc)
    click.echo(f"{out.cert}\n{out.key}")


@pki_issue.command("client")
@_dir_option
@click.argument("name")
@click.option("--role", type=click.Choice(CLIENT_ROLES), default=ROLE_OPERATOR, show_default=True,
              help="The role in the fleet API (the certificate's O).")
@click.option("--force", is_flag=True, help="Issue again over an existing certificate.")
def pki_issue_client(directory: str, name: str, role: str, force: bool) -> None:
    """A client's certificate (client auth, O=ROLE, CN=NAME)."""
    try:
        out = ClusterPKI(directory).client(name, role, force=force)
    except PKIError as exc:
        _fail(exc)
    click.echo(f"{out.cert}\n{out.key}")


@pki.command("show")
@_dir_option
@click.argument("name")
def pki_show(directory: str, name: str) -> None:
    """Print a certificate's subject, role, SANs and validity."""
    from cryptography import x509

    try:
        cert = ClusterPKI(directory).read(name)
    except PKIError as exc:
        _fail(exc)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        san_text = ", ".join(str(getattr(g, "value", g)) for g in sans)
    except x509.ExtensionNotFound:
        san_text = "-"
    click.echo(f"subject: {cert.subject.rfc4514_string()}\nrole: {role_of(cert) or '-'}\n"
               f"sans: {san_text}\nnot after: {cert.not_valid_after_utc.isoformat()}")
