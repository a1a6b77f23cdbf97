"""A cluster PKI made with `cryptography` (never by shelling out to openssl).

One directory holds the cluster's CA and what it issued, as PEM files:

    ca.pem, ca.key                  the cluster CA (ECDSA P-256, 10 years)
    <name>.pem, <name>.key          a certificate and its key (mode 0600)

Kinds of certificate (all signed by the CA, ECDSA P-256, CN = the name given):

* **machine**: a fleetd node (and its etcd member). Server *and* client auth, IP SANs (and
  DNS SANs) for the addresses it serves on; subject O=machine. It serves the fleet API, etcd's
  client and peer URLs and the image server, and authenticates to the other nodes' servers.
* **client**: a user or a program. Client auth only; the subject's O is its role in the fleet
  API (`operator` or `read-only`, see fleetd.api.auth), its CN the user name (etcd, with
  --client-cert-auth, takes the CN as the user name too).

`init` is idempotent (an existing CA is kept); `issue` refuses to overwrite a certificate unless
asked to. Every failure is a PKIError with a one-line message naming the file.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetd.errors import FleetError

ROLE_OPERATOR = "operator"
ROLE_READ_ONLY = "read-only"
ROLE_MACHINE = "machine"
CLIENT_ROLES = (ROLE_OPERATOR, ROLE_READ_ONLY)

CA_DAYS = 3650
CERT_DAYS = 825
_BACKDATE = _dt.timedelta(minutes=5)  # tolerate clocks a little behind the issuer's


class PKIError(FleetError):
    """A PKI directory or certificate problem (one line, naming the file)."""


@dataclass(frozen=True)
class Issued:
    """Paths of an issued certificate and its key (and of the CA that signed it)."""

    cert: Path
    key: Path
    ca: Path


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with `mode` from the start (a key is never readable by others)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _name(common_name: str, organization: str | None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def check_name(name: str) -> str:
    """A certificate name is also a file name: letters, digits, '.', '_', '-' (no path)."""
    if not name or name.startswith(".") or any(not (c.isalnum() or c in "._-") for c in name) or len(name) > 64:
        raise PKIError(f"certificate name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (not first '.')")
    return name


def create_ca(common_name: str = "fleet cluster CA", days: int = CA_DAYS
              ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_key()
    subject = _name(common_name, "fleet")
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE).not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str, *,
               organization: str | None, server: bool, client: bool, ips: Iterable[str] = (),
               dns: Iterable[str] = (), days: int = CERT_DAYS
               ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A leaf certificate signed by the CA (pure apart from key generation)."""
    key = _new_key()
    now = _now()
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
             ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    if not usages:
        raise PKIError(f"certificate {common_name}: neither server nor client use")
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organization)).issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE).not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                     crl_sign=False, content_commitment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False),
                       critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
    )
    sans: list[x509.GeneralName] = []
    for ip in ips:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise PKIError(f"certificate {common_name}: {ip!r} is not an IP address") from None
    sans += [x509.DNSName(d) for d in dns]
    if server and not sans:
        raise PKIError(f"certificate {common_name}: a server certificate needs at least one IP or DNS name")
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def role_of(cert: x509.Certificate) -> str:
    """The subject's O (the role a client certificate carries), or ""."""
    found = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(found[0].value) if found else ""


class ClusterPKI:
    """The PKI directory: `ClusterPKI(dir).init()`, then `.machine(...)`, `.client(...)`."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    @property
    def ca_path(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def ca_key_path(self) -> Path:
        return self.dir / "ca.key"

    def exists(self) -> bool:
        return self.ca_path.is_file() and self.ca_key_path.is_file()

    def init(self, common_name: str = "fleet cluster CA") -> bool:
        """Create the CA unless one exists; True if it was created."""
        if self.exists():
            self._load_ca()  # it must at least be readable
            return False
        if self.ca_path.exists() or self.ca_key_path.exists():
            raise PKIError(f"{self.dir}: has only one of ca.pem and ca.key; remove it or restore the other")
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise PKIError(f"{self.dir}: cannot create: {exc.strerror}") from None
        key, cert = create_ca(common_name)
        _write(self.ca_key_path, _key_pem(key), 0o600)
        _write(self.ca_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return True

    def _load_ca(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        if not self.exists():
            raise PKIError(f"{self.dir}: no cluster CA (ca.pem, ca.key); run `fleetctl pki init --dir {self.dir}`")
        try:
            cert = x509.load_pem_x509_certificate(self.ca_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise PKIError(f"{self.ca_path}: not a PEM certificate ({exc})") from None
        try:
            key = serialization.load_pem_private_key(self.ca_key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError):
            raise PKIError(f"{self.ca_key_path}: not an unencrypted PEM private key") from None
        return key, cert  # type: ignore[return-value]

    def paths(self, name: str) -> Issued:
        check_name(name)
        return Issued(self.dir / f"{name}.pem", self.dir / f"{name}.key", self.ca_path)

    def _issue(self, name: str, force: bool, **kwargs) -> Issued:
        out = self.paths(name)
        if name == "ca":
            raise PKIError("certificate name 'ca' is the CA's own")
        if not force and (out.cert.exists() or out.key.exists()):
            raise PKIError(f"{out.cert}: exists (use --force to issue it again)")
        ca_key, ca_cert = self._load_ca()
        key, cert = issue_cert(ca_key, ca_cert, name, **kwargs)
        _write(out.key, _key_pem(key), 0o600)
        _write(out.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return out

    def machine(self, name: str, ips: Sequence[str], dns: Sequence[str] = (), *, force: bool = False) -> Issued:
        """A node's certificate: server + client auth, O=machine, SANs for its addresses."""
        return self._issue(name, force, organization=ROLE_MACHINE, server=True, client=True,
                           ips=ips, dns=dns)

    def client(self, name: str, role: str = ROLE_OPERATOR, *, force: bool = False) -> Issued:
        """A client's certificate: client auth only, O=<role>, CN=<name>."""
        if role not in CLIENT_ROLES:
            raise PKIError(f"role {role!r}: expected one of {', '.join(CLIENT_ROLES)}")
        return self._issue(name, force, organization=role, server=False, client=True)

    def read(self, name: str) -> x509.Certificate:
        path = self.paths(name).cert
        try:
            return x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise PKIError(f"{path}: cannot read certificate ({exc})") from None
