from pathlib import Path

import pytest

from fleetd.config import load_config, parse_duration, parse_list, parse_metadata, read_machine_id
from fleetd.errors import ConfigError


def test_defaults(tmp_path: Path):
    cfg = load_config(tmp_path / "missing.conf", env={})
    assert cfg.etcd.endpoints == ("http://127.0.0.1:2379",)
    assert cfg.etcd.key_prefix == "/_coreos.com/fleet/"
    assert cfg.agent_ttl == 5.0 and cfg.engine_reconcile_interval == 2.0
    assert cfg.units_directory == "/run/fleet/units/"


def test_file_env_and_flags_precedence(tmp_path: Path):
    conf = tmp_path / "fleet.conf"
    conf.write_text(
        '# comment\netcd_servers=["http://10.0.0.1:2379","http://10.0.0.2:2379"]\n'
        'metadata="region=us, disk=ssd,region=eu"\nagent_ttl=10s\npublic_ip=10.0.0.5\n'
        "etcd_key_prefix=/custom\n"
    )
    cfg = load_config(conf, env={"FLEET_PUBLIC_IP": "10.0.0.6", "FLEET_DISABLE_ENGINE": "true"},
                      overrides={"agent_ttl": "500ms"})
    assert cfg.etcd.endpoints == ("http://10.0.0.1:2379", "http://10.0.0.2:2379")
    assert dict(cfg.metadata) == {"region": "eu", "disk": "ssd"}
    assert cfg.public_ip == "10.0.0.6"
    assert cfg.disable_engine is True
    assert cfg.agent_ttl == 0.5
    assert cfg.etcd.key_prefix == "/custom/"


@pytest.mark.parametrize(
    "text,expected", [("30s", 30), ("500ms", 0.5), ("2m", 120), ("3", 3), ("1.5s", 1.5)]
)
def test_durations(text, expected):
    assert parse_duration(text, "agent_ttl") == expected


@pytest.mark.parametrize("text", ["", "abc", "-1s", "0", "3 days"])
def test_bad_durations(text):
    with pytest.raises(ConfigError, match="agent_ttl"):
        parse_duration(text, "agent_ttl")


def test_lists_and_metadata():
    assert parse_list('["a", "b"]') == ("a", "b")
    assert parse_list("a,b,") == ("a", "b")
    assert parse_metadata("") == {}
    with pytest.raises(ConfigError, match="metadata: invalid pair 'novalue'"):
        parse_metadata("novalue")


def test_bad_values_name_the_key(tmp_path: Path):
    conf = tmp_path / "fleet.conf"
    conf.write_text("engine_reconcile_interval=fast\n")
    with pytest.raises(ConfigError, match="engine_reconcile_interval"):
        load_config(conf, env={})
    conf.write_text("this line has no equals sign\n")
    with pytest.raises(ConfigError, match=r"fleet.conf:1"):
        load_config(conf, env={})


def test_machine_id(tmp_path: Path):
    path = tmp_path / "machine-id"
    path.write_text("0123456789abcdef0123456789abcdef\n")
    assert read_machine_id(path) == "0123456789abcdef0123456789abcdef"
    path.write_text("short\n")
    with pytest.raises(ConfigError, match="invalid machine ID"):
        read_machine_id(path)
