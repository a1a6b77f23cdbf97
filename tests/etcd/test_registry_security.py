"""The registry over TLS with client certificates, and with etcd user/password auth (real etcd)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fleetd.config import EtcdSettings
from fleetd.errors import ConfigError, RegistryError
from fleetd.model import Unit
from fleetd.registry import Registry
from fleetlab.testing.etcd import EtcdServer
from fleetd.unit.file import UnitFile

HELLO = UnitFile.parse("[Service]\nExecStart=/bin/sleep 100\n")


#: P-256 keys, as fleetd.pki makes them (an RSA key took openssl 0.2-0.5 s of CPU each)
NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", *NEW_KEY, "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=d)


def make_cert(d: Path, ca: str, name: str, usage: str, san: str | None = None) -> None:
    ext = d / f"{name}.ext"
    ext.write_text(f"extendedKeyUsage={usage}\n" + (f"subjectAltName={san}\n" if san else ""))
    openssl("req", *NEW_KEY, "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-extfile", ext.name, "-out", f"{name}.crt", cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "rogue")
    make_cert(d, "ca", "server", "serverAuth,clientAuth", "IP:127.0.0.1")
    make_cert(d, "ca", "client", "clientAuth")
    make_cert(d, "rogue", "intruder", "clientAuth")
    return d


@pytest.fixture(scope="module")
def tls_etcd(pki):
    with EtcdServer(tls=(str(pki / "ca.crt"), str(pki / "server.crt"), str(pki / "server.key"))) as server:
        yield server


async def test_tls_with_client_certificate(tls_etcd, pki, etcd_prefix):
    settings = EtcdSettings(endpoints=(tls_etcd.endpoint,), key_prefix=etcd_prefix, request_timeout=5,
                            cafile=str(pki / "ca.crt"), certfile=str(pki / "client.crt"), keyfile=str(pki / "client.key"))
    async with await Registry.connect(settings) as reg:
        assert await reg.create_unit(Unit("hello.service", HELLO))
        assert [u.name for u in await reg.list_units()] == ["hello.service"]


@pytest.mark.parametrize("cert", [None, "intruder"])
async def test_tls_refuses_missing_or_foreign_certificates(tls_etcd, pki, etcd_prefix, cert):
    files = {"certfile": str(pki / f"{cert}.crt"), "keyfile": str(pki / f"{cert}.key")} if cert else {}
    settings = EtcdSettings(endpoints=(tls_etcd.endpoint,), key_prefix=etcd_prefix, request_timeout=2,
                            cafile=str(pki / "ca.crt"), **files)
    reg = await Registry.connect(settings)
    try:
        with pytest.raises(RegistryError, match="etcd"):
            await reg.list_units()
    finally:
        await reg.close()


def test_missing_tls_file_is_a_config_error(etcd_prefix, tmp_path):
    settings = EtcdSettings(endpoints=("https://127.0.0.1:2379",), key_prefix=etcd_prefix,
                            cafile=str(tmp_path / "nope.crt"))
    from fleetd.registry.connection import Connection

    with pytest.raises(ConfigError, match="nope.crt: cannot read TLS file"):
        Connection(settings)


async def test_user_and_password(etcd_prefix):
    with EtcdServer() as server:
        env = dict(os.environ, ETCDCTL_API="3")
        ctl = ["etcdctl", "--endpoints", server.endpoint]
        for args in (["user", "add", "root:rootpw"], ["user", "add", "fleet:fleetpw"], ["role", "add", "fleet"],
                     ["role", "grant-permission", "fleet", "--prefix=true", "readwrite", etcd_prefix],
                     ["user", "grant-role", "fleet", "fleet"], ["auth", "enable"]):
            subprocess.run(ctl + args, env=env, check=True, capture_output=True)
        good = EtcdSettings(endpoints=(server.endpoint,), key_prefix=etcd_prefix, username="fleet", password="fleetpw")
        async with await Registry.connect(good) as reg:
            assert await reg.create_unit(Unit("hello.service", HELLO))
            assert len(await reg.list_units()) == 1
        bad = EtcdSettings(endpoints=(server.endpoint,), key_prefix=etcd_prefix, username="fleet", password="wrong")
        with pytest.raises(RegistryError, match="etcd"):
            reg = await Registry.connect(bad)
            try:
                await reg.list_units()
            finally:
                await reg.close()
        outside = EtcdSettings(endpoints=(server.endpoint,), key_prefix="/elsewhere/", username="fleet", password="fleetpw")
        async with await Registry.connect(outside) as reg:
            with pytest.raises(RegistryError, match="PERMISSION_DENIED|permission denied"):
                await reg.list_units()
