"""fleetctl's fast paths over https with client certificates (fleetctl/fast_http.py: the
standard library's ssl, configured as the full CLI's API client is): two clusters, each a real
fleetd API serving TLS on real etcd with the engine-and-agent stand-in; the same command lines
through `python -m fleetctl` (the fast path: none of the full CLI's modules imported) and
through the full CLI must give the same stdout, stderr and exit code. A TLS failure (no client
certificate, another CA) is left to the full CLI, which reports it in its own words."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from _fast_cli_common import env_without_fleetctl_settings, imported, without_importtime, write_units
from _forked_cli import shared_fast_path
from test_api import NEW_KEY, make_pki
from test_fleetctl_fast_units import serving_clusters, waited

FULL_CLI_MODULES = ("click", "fleetd", "fleetctl.cli", "fleetctl.commands", "fleetctl.api_client", "asyncio")


def operator_certificate(pki: dict[str, str]) -> None:
    """pki["operator.pem"/".key"]: a client certificate of the operator role (O=operator), signed
    by the test CA (make_pki's client certificate is read-only: no writes)."""
    where = Path(pki["ca.pem"]).parent

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=where)

    run("req", *NEW_KEY, "-nodes", "-keyout", "operator.key", "-out", "operator.csr", "-subj", "/O=operator/CN=ops")
    run("x509", "-req", "-in", "operator.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "operator.pem", "-days", "2")
    pki["operator.pem"], pki["operator.key"] = str(where / "operator.pem"), str(where / "operator.key")


@pytest.fixture(scope="module")
def tls_clusters(etcd_server, tmp_path_factory):
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    operator_certificate(pki)
    tls = dict(api_cafile=pki["ca.pem"], api_certfile=pki["server.pem"], api_keyfile=pki["server.key"],
               api_insecure_tcp=False)
    with serving_clusters(etcd_server, tmp_path_factory, "fast-https", **tls) as servers:
        yield servers, pki, servers.cli


def both(tls_clusters, work, *args, tls=("ca", "client"), cold=True):
    """`fleetctl ARGS` on https: the fast entry point (forked from a bare interpreter:
    tests/_forked_cli.py's ForkedFastPath; with `cold=False`, for a run it hands over to the
    full CLI, forked from the full CLI's server: entry "fast") on one
    cluster, the full CLI on the other; `tls`: the CA and the client certificate given (by
    flags, as the environment would: both paths read them alike)."""
    (fast_srv, full_srv), pki, cli = tls_clusters
    flags = []
    if "ca" in tls:
        flags.append(f"--ca-file={pki['ca.pem']}")
    if "client" in tls:
        flags += [f"--cert-file={pki['operator.pem']}", f"--key-file={pki['operator.key']}"]

    def endpoint(srv):
        return "--endpoint=https://" + srv.harness.server.tcp_addresses[0]

    if cold:
        quick = shared_fast_path().run([endpoint(fast_srv), *flags, *args], timeout=120, cwd=work,
                                       env=env_without_fleetctl_settings())
    else:
        quick = cli.run([endpoint(fast_srv), *flags, *args], timeout=120, cwd=work, env=env_without_fleetctl_settings(),
                        entry="fast")
    slow = cli.run([endpoint(full_srv), *flags, *args], timeout=120, cwd=work, env=env_without_fleetctl_settings())
    # the endpoints differ only in their port: compare with it taken out
    for proc, srv in ((quick, fast_srv), (slow, full_srv)):
        port = srv.harness.server.tcp_addresses[0].rsplit(":", 1)[1]
        proc.stdout, proc.stderr = proc.stdout.replace(port, "PORT"), proc.stderr.replace(port, "PORT")
    return quick, slow


def same(tls_clusters, work, *args, fast_path=True, tls=("ca", "client"), cold=True):
    """`cold=False` (with fast_path=False): the hand-over forked, `handed_over` checked."""
    quick, slow = both(tls_clusters, work, *args, tls=tls, cold=cold)
    assert (quick.returncode, waited(quick.stdout), without_importtime(quick.stderr)) == (
        slow.returncode, waited(slow.stdout), slow.stderr), args
    if not cold:
        assert not fast_path and quick.handed_over, args
        return quick
    names = imported(quick.stderr)
    on_fast_path = not any(n == m or n.startswith(m + ".") for n in names for m in FULL_CLI_MODULES)
    assert on_fast_path == fast_path, (args, sorted(n for n in names if n.startswith(("fleetctl", "click"))))
    if fast_path:
        assert "ssl" in names  # https: the standard library's TLS
    return quick


def test_listings_and_a_unit_lifecycle_over_https(tls_clusters, tmp_path):
    assert same(tls_clusters, tmp_path, "list-machines", "--no-legend").stdout == "01234567...\t10.1.2.3\t-\n"
    write_units(tmp_path, ["tls1.service", "tls2.service", "tls3.service"])
    out = same(tls_clusters, tmp_path, "start", "tls1.service")  # a lone new unit
    assert out.stdout == "Unit tls1.service inactive\nUnit tls1.service launched on 01234567.../10.1.2.3\n"
    same(tls_clusters, tmp_path, "start", "tls2.service", "tls3.service")  # several: one POST /units
    assert "tls3.service" in same(tls_clusters, tmp_path, "list-units", "--no-legend").stdout
    same(tls_clusters, tmp_path, "stop", "tls1.service")
    out = same(tls_clusters, tmp_path, "destroy", "tls1.service", "tls2.service", "tls3.service")
    assert out.returncode == 0 and out.stdout == "".join(f"Destroyed tls{i}.service\n" for i in (1, 2, 3))
    same(tls_clusters, tmp_path, "list-units", "--no-legend")


@pytest.mark.parametrize("tls", [("ca",), ("client",)], ids=["no-client-certificate", "system-cas-only"])
def test_a_tls_failure_is_the_full_clis_to_report(tls_clusters, tmp_path, tls):
    out = same(tls_clusters, tmp_path, "list-machines", fast_path=False, tls=tls)
    assert out.returncode == 1 and "unreachable" in out.stderr
    write_units(tmp_path, ["tlsfail.service"])
    # (the cold hand-over above is the control: this one forked)
    out = same(tls_clusters, tmp_path, "start", "tlsfail.service", fast_path=False, tls=tls, cold=False)
    assert out.returncode == 1
