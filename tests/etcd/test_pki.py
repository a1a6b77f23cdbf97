"""The cluster PKI (fleetd.pki, `fleetctl pki`): certificates made with `cryptography`, checked by
real TLS peers: Python's ssl, and a real etcd with client-certificate auth and RBAC."""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from fleetctl.cli import cli
from fleetd.config import EtcdSettings
from fleetd.errors import RegistryError
from fleetd.model import Unit
from fleetd.pki import ClusterPKI, PKIError, role_of
from fleetd.registry import Registry
from fleetlab.testing.etcd import EtcdServer
from fleetd.unit.file import UnitFile
from fleetlab.etcd import EtcdTLS, enable_rbac, etcdctl

HELLO = UnitFile.parse("[Service]\nExecStart=/bin/sleep 100\n")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> ClusterPKI:
    p = ClusterPKI(tmp_path_factory.mktemp("pki") / "cluster")
    assert p.init() is True
    p.machine("node1", ["127.0.0.1"], ["localhost"])
    p.client("root")
    p.client("alice", "operator")
    p.client("bob", "read-only")
    p.client("mallory")  # a valid certificate, but no etcd user
    return p


def test_ca_and_leaf_certificates(pki):
    ca = x509.load_pem_x509_certificate(pki.ca_path.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    node = pki.read("node1")
    node.verify_directly_issued_by(ca)
    sans = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert role_of(node) == "machine"
    bob = pki.read("bob")
    assert role_of(bob) == "read-only" and role_of(pki.read("alice")) == "operator"
    assert list(bob.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    for name in ("ca", "node1", "bob"):
        key = pki.dir / f"{name}.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_init_is_idempotent_and_issue_refuses_to_overwrite(pki):
    before = pki.ca_path.read_bytes()
    assert pki.init() is False and pki.ca_path.read_bytes() == before
    with pytest.raises(PKIError, match="bob.pem: exists"):
        pki.client("bob", "read-only")
    with pytest.raises(PKIError, match="role 'admin'"):
        pki.client("carol", "admin")
    with pytest.raises(PKIError, match="certificate name"):
        pki.client("../etc/passwd")
    with pytest.raises(PKIError, match="not an IP address"):
        pki.machine("node9", ["10.0.0.300"])
    with pytest.raises(PKIError, match="no cluster CA"):
        ClusterPKI(pki.dir / "nope").client("x")


def test_python_ssl_accepts_the_chain(pki, tmp_path):
    """The server context fleetd builds (CA + client certs required) loads what the PKI wrote."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_path))
    server.load_cert_chain(pki.paths("node1").cert, pki.paths("node1").key)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(cafile=str(pki.ca_path))
    client.load_cert_chain(pki.paths("alice").cert, pki.paths("alice").key)
    import socket
    import threading

    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    seen = {}

    def serve():
        conn, _ = lsock.accept()
        with server.wrap_socket(conn, server_side=True) as tls:
            seen["peer"] = tls.getpeercert()
            tls.sendall(b"ok")

    t = threading.Thread(target=serve)
    t.start()
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.recv(2) == b"ok"
    t.join(5)
    lsock.close()
    subject = dict(x[0] for x in seen["peer"]["subject"])
    assert subject == {"organizationName": "operator", "commonName": "alice"}


def test_fleetctl_pki_commands(tmp_path):
    runner = CliRunner()
    d = str(tmp_path / "p")
    r = runner.invoke(cli, ["pki", "init", "--dir", d])
    assert r.exit_code == 0 and "created CA" in r.output
    assert "kept existing" in runner.invoke(cli, ["pki", "init", "--dir", d]).output
    r = runner.invoke(cli, ["pki", "issue", "machine", "n1", "--dir", d, "--ip", "10.1.0.2"])
    assert r.exit_code == 0 and r.output.split() == [f"{d}/n1.pem", f"{d}/n1.key"]
    r = runner.invoke(cli, ["pki", "issue", "client", "viewer", "--role", "read-only", "--dir", d])
    assert r.exit_code == 0
    r = runner.invoke(cli, ["pki", "show", "viewer", "--dir", d])
    assert "role: read-only" in r.output and "CN=viewer" in r.output
    r = runner.invoke(cli, ["pki", "issue", "client", "viewer", "--dir", d])
    assert r.exit_code == 1 and "exists (use --force" in r.output
    r = runner.invoke(cli, ["pki", "issue", "machine", "n2", "--dir", d])
    assert r.exit_code == 1 and "needs at least one IP" in r.output


# ---------------------------------------------------------------------------- a real etcd


@pytest.fixture(scope="module")
def rbac_etcd(pki):
    node = pki.paths("node1")
    with EtcdServer(tls=(str(pki.ca_path), str(node.cert), str(node.key))) as server:
        root = pki.paths("root")
        enable_rbac([server.endpoint], EtcdTLS(str(pki.ca_path), str(root.cert), str(root.key)),
                    "/fleet-test/", writers=["node1", "alice"], readers=["bob"])
        yield server


def settings_for(pki, server, name: str | None, prefix: str = "/fleet-test/") -> EtcdSettings:
    files = {}
    if name:
        files = {"certfile": str(pki.paths(name).cert), "keyfile": str(pki.paths(name).key)}
    return EtcdSettings(endpoints=(server.endpoint,), key_prefix=prefix, request_timeout=3,
                        cafile=str(pki.ca_path), **files)


async def test_fleetd_works_as_its_certificates_user(pki, rbac_etcd):
    async with await Registry.connect(settings_for(pki, rbac_etcd, "node1")) as reg:
        assert await reg.create_unit(Unit("hello.service", HELLO))
        assert [u.name for u in await reg.list_units()] == ["hello.service"]
        lease = await reg.grant_lease(5)  # machine presence: leases work under RBAC
        assert lease


@pytest.mark.parametrize("name, prefix, what", [
    (None, "/fleet-test/", "no certificate"),
    ("mallory", "/fleet-test/", "a cluster certificate that is no etcd user"),
    ("alice", "/other/", "a writer outside the fleet prefix"),
])
async def test_etcd_refuses(pki, rbac_etcd, name, prefix, what):
    reg = await Registry.connect(settings_for(pki, rbac_etcd, name, prefix))
    try:
        with pytest.raises(RegistryError):
            await reg.list_units()
    finally:
        await reg.close()


def test_reader_reads_but_cannot_write(pki, rbac_etcd):
    bob = pki.paths("bob")
    tls = EtcdTLS(str(pki.ca_path), str(bob.cert), str(bob.key))
    assert etcdctl([rbac_etcd.endpoint], "get", "--prefix", "/fleet-test/", tls=tls).returncode == 0
    proc = etcdctl([rbac_etcd.endpoint], "put", "/fleet-test/x", "y", tls=tls, check=False)
    assert proc.returncode != 0 and "permission denied" in proc.stderr
    # and etcdctl without any certificate gets nothing at all (plain HTTP to the TLS port: it
    # waits for its command timeout, 5 s by default; 2 s here, the last flag given wins)
    proc = etcdctl([rbac_etcd.endpoint.replace("https", "http")], "--command-timeout=2s", "get", "/fleet-test/x",
                   check=False)
    assert proc.returncode != 0
