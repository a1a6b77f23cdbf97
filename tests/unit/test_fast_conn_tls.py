"""The fast path's TLS settings (fleetctl/fast_conn.py, standard library only: it cannot import
fleetd) are the full CLI's (fleetd.wire.client_ssl_context): the same CA handling, protocol
floor, host name and verification settings, so that both paths accept and refuse the same
servers. A file that cannot be loaded sends the command to the full CLI."""

from __future__ import annotations

import subprocess

import pytest

from fleetctl.fast_conn import NotFast, _tls_context
from fleetd.wire import client_ssl_context


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory) -> str:
    where = tmp_path_factory.mktemp("ca")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=fast-conn-test-ca"],
                   check=True, capture_output=True, cwd=where)
    return str(where / "ca.pem")


@pytest.mark.parametrize("with_ca", [False, True], ids=["system-cas", "ca-file"])
def test_the_same_context_as_the_full_clis(with_ca, ca_file):
    cafile = ca_file if with_ca else None
    fast = _tls_context({"ca_file": cafile})
    full = client_ssl_context(cafile, None, None)
    for setting in ("minimum_version", "maximum_version", "check_hostname", "verify_mode", "verify_flags", "options"):
        assert getattr(fast, setting) == getattr(full, setting), setting
    assert fast.cert_store_stats() == full.cert_store_stats()


def test_files_it_cannot_load_go_to_the_full_cli(tmp_path, ca_file):
    with pytest.raises(NotFast):
        _tls_context({"ca_file": str(tmp_path / "missing.pem")})
    with pytest.raises(NotFast):
        _tls_context({"ca_file": ca_file, "cert_file": str(tmp_path / "missing.pem")})
