"""The texts fleet-lab writes for its default security (issue 17): etcd with TLS on client and
peer URLs, fleet.conf with the node's certificate for etcd and the API; --insecure plaintext."""

from __future__ import annotations

from fleetd.config import load_config
from fleetlab.config import NODE_CA, NODE_CERT, NODE_KEY, EtcdMember, FleetConf, render_etcd_unit


def test_tls_etcd_unit():
    cluster = [EtcdMember(f"l-n{i}", f"10.1.1.{10 + i}", tls=True) for i in range(1, 4)]
    unit = render_etcd_unit(cluster[0], cluster, token="t")
    assert "--listen-client-urls=https://10.1.1.11:2379,https://127.0.0.1:2379" in unit
    assert "--initial-cluster=l-n1=https://10.1.1.11:2380,l-n2=https://10.1.1.12:2380,l-n3=https://10.1.1.13:2380" in unit
    for flag in ("--client-cert-auth", "--peer-client-cert-auth", f"--trusted-ca-file={NODE_CA}",
                 f"--peer-trusted-ca-file={NODE_CA}", f"--cert-file={NODE_CERT}", f"--key-file={NODE_KEY}",
                 f"--peer-cert-file={NODE_CERT}", f"--peer-key-file={NODE_KEY}"):
        assert f" {flag}" in unit, flag
    plain = render_etcd_unit(EtcdMember("l-n1", "10.1.1.11"), [EtcdMember("l-n1", "10.1.1.11")], token="t")
    assert "https" not in plain and "cert" not in plain


def test_tls_fleet_conf_is_read_by_fleetd(tmp_path):
    text = FleetConf(etcd_servers=("https://10.1.1.11:2379",), public_ip="10.1.1.11", tls=True).render()
    assert "api_insecure_tcp" not in text and "password" not in text
    path = tmp_path / "fleet.conf"
    path.write_text(text)
    cfg = load_config(path, env={})
    assert (cfg.etcd.cafile, cfg.etcd.certfile, cfg.etcd.keyfile) == (NODE_CA, NODE_CERT, NODE_KEY)
    assert (cfg.api_cafile, cfg.api_certfile, cfg.api_keyfile) == (NODE_CA, NODE_CERT, NODE_KEY)
    assert cfg.api_tcp == "10.1.1.11:54728" and not cfg.api_insecure_tcp
    insecure = FleetConf(etcd_servers=("http://10.1.1.11:2379",), public_ip="10.1.1.11").render()
    assert "api_insecure_tcp=true\n" in insecure and "cafile" not in insecure
