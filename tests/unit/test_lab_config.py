"""fleetlab's pure parts: names, subnet choice, rendered units and config, state files (no root)."""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path

import pytest

from fleetd.errors import LabError
from fleetlab.config import (
    EtcdMember,
    FleetConf,
    check_agent_ttl,
    parse_metadata_specs,
    render_etcd_unit,
    render_fleetd_unit,
    render_target,
)
from fleetlab.etcd import member_count
from fleetlab.naming import LabNames, check_lab_name
from fleetlab.network import POOL, choose_subnet, host_ip, node_ip
from fleetlab.state import LabState, NodeState
from fleetlab.sysutil import ProcRef

CHECKOUT = Path("/work/main")


@pytest.mark.parametrize("name", ["a", "lab1", "lab-2", "abcdefghijkl"])
def test_good_lab_names(name):
    assert check_lab_name(name) == name


@pytest.mark.parametrize("name", ["", "1lab", "Lab", "lab_1", "abcdefghijklm", "lab/x", "-x", "lab 1"])
def test_bad_lab_names(name):
    with pytest.raises(LabError, match="lab name"):
        check_lab_name(name)


def test_interface_names_fit_ifnamsiz():
    names = LabNames("abcdefghijkl")
    assert names.bridge == "fl-abcdefghijkl" and len(names.bridge) == 15
    names.check_node_count(9)
    with pytest.raises(LabError, match="exceed 15"):
        names.check_node_count(10)
    LabNames("lab1").check_node_count(200)
    with pytest.raises(LabError, match="between 1 and"):
        LabNames("lab1").check_node_count(0)


def test_subnet_avoids_used_networks_and_differs_between_labs():
    first = choose_subnet("lab1", [])
    assert first.prefixlen == 24 and first.subnet_of(POOL)
    assert choose_subnet("lab1", []) == first  # deterministic
    used = [first, IPv4Network("10.0.0.0/8")]
    with pytest.raises(LabError, match="no free /24"):
        choose_subnet("lab1", used)
    second = choose_subnet("lab1", [first, IPv4Network("192.168.0.0/16")])
    assert second != first and not second.overlaps(first)
    # a wide route covering part of the pool pushes the choice out of it
    wide = IPv4Network(f"{first.network_address}/20", strict=False)
    assert not choose_subnet("lab1", [wide]).overlaps(wide)
    assert str(host_ip(first)).endswith(".1") and str(node_ip(first, 3)).endswith(".13")


def test_target_pulls_basic_system_and_dbus_only():
    target = render_target()
    assert "Requires=basic.target dbus.socket" in target and "AllowIsolate=yes" in target
    assert "DefaultDependencies=no" in target and "multi-user" not in target


def test_etcd_members_and_unit():
    assert [member_count(n) for n in (1, 2, 3, 5)] == [1, 1, 3, 3]
    nodes = [(f"l-n{i}", f"10.1.1.{10 + i}") for i in range(1, 4)]
    cluster = [EtcdMember(n, ip) for n, ip in nodes[:3]]
    unit = render_etcd_unit(cluster[1], cluster, token="fleetlab-l")
    assert "ExecStart=/usr/bin/etcd " in unit and "Type=notify" in unit
    assert "--listen-client-urls=http://10.1.1.12:2379,http://127.0.0.1:2379" in unit
    assert "--listen-peer-urls=http://10.1.1.12:2380" in unit
    assert "--initial-cluster=l-n1=http://10.1.1.11:2380,l-n2=http://10.1.1.12:2380,l-n3=http://10.1.1.13:2380" in unit
    assert "--pre-vote=true" in unit  # a member back from a partition does not depose the leader


def test_fleet_conf_renders_fleet_keys():
    conf = FleetConf(
        etcd_servers=("http://10.1.1.11:2379", "http://10.1.1.12:2379"),
        public_ip="10.1.1.12",
        metadata={"hostname": "l-n2", "role": "db"},
        agent_ttl="3s",
    ).render()
    assert "etcd_servers=http://10.1.1.11:2379,http://10.1.1.12:2379\n" in conf
    assert "public_ip=10.1.1.12\n" in conf and 'metadata="hostname=l-n2,role=db"\n' in conf
    assert 'agent_ttl="3s"\n' in conf and "engine_reconcile_interval=1\n" in conf
    assert "etcd_key_prefix=/_coreos.com/fleet/\n" in conf


def test_agent_ttl_is_a_duration():
    assert check_agent_ttl("500ms") == "500ms"
    with pytest.raises(LabError, match="agent_ttl"):
        check_agent_ttl("5")


def test_metadata_specs():
    assert parse_metadata_specs(["zone=a", "2:role=db,disk=ssd"], 3) == {
        1: {"zone": "a"},
        2: {"zone": "a", "role": "db", "disk": "ssd"},
        3: {"zone": "a"},
    }
    with pytest.raises(LabError, match="node number"):
        parse_metadata_specs(["4:role=db"], 3)
    with pytest.raises(LabError, match="not key=value"):
        parse_metadata_specs(["role"], 3)
    with pytest.raises(LabError, match="metadata key"):
        parse_metadata_specs(["r o=x"], 3)


def test_fleetd_unit_from_template_replaces_every_exec_start():
    template = (
        "[Unit]\nDescription=fleet\n\n[Service]\nType=notify\n"
        "ExecStart=/usr/bin/fleetd \\\n    --verbose\nExecStart=/second\nRestart=always\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    unit = render_fleetd_unit(CHECKOUT, template, etcd_local=True)
    assert unit.count("ExecStart=") == 1
    assert "ExecStart=/work/main/.venv/bin/fleetd --config /etc/fleet/fleet.conf\n" in unit
    assert "--verbose" not in unit and "/second" not in unit
    assert "After=fleetlab-etcd.service" in unit and "Restart=always" in unit
    assert "After=fleetlab-etcd" not in render_fleetd_unit(CHECKOUT, template, etcd_local=False)


def test_fleetd_unit_builtin_and_bad_template():
    unit = render_fleetd_unit(CHECKOUT, None, etcd_local=False)
    for line in ("Type=notify", "Restart=always", "RestartSec=1",
                 "ExecStart=/work/main/.venv/bin/fleetd --config /etc/fleet/fleet.conf"):
        assert line + "\n" in unit
    with pytest.raises(LabError, match="units/fleetd.service: no ExecStart="):
        render_fleetd_unit(CHECKOUT, "[Service]\nType=simple\n", etcd_local=False)


def test_state_round_trips_through_json(tmp_path):
    node = NodeState(
        name="l-n1", index=1, ip="10.1.1.11", machine_id="0" * 32, netns="l-n1", veth="l-n1",
        root="/r", upper="/u", work="/w", etcd_member=True, metadata={"hostname": "l-n1"},
        nspawn=ProcRef(10, 100), init=ProcRef(11, 101),
    )
    state = LabState(name="l", subnet="10.1.1.0/24", bridge="fl-l", host_ip="10.1.1.1", checkout="/c",
                     etcd_key_prefix="/p/", agent_ttl="5s", fleetd=True, tmpfs="/t", nodes=[node])
    path = tmp_path / "state.json"
    state.save(path)
    assert LabState.load(path) == state
    path.write_text("{not json")
    with pytest.raises(LabError, match="unreadable lab state"):
        LabState.load(path)


def test_proc_ref_knows_a_recycled_pid():
    me = ProcRef.of(__import__("os").getpid())
    assert me is not None and me.alive()
    assert not ProcRef(me.pid, me.start + 1).alive()


def test_etcdctl_ignores_the_callers_etcdctl_variables(monkeypatch):
    """After `eval "$(fleet-lab env)"`, ETCDCTL_ENDPOINTS would make etcdctl refuse --endpoints."""
    import fleetlab.etcd as lab_etcd

    seen = {}

    def fake_run(cmd, env, timeout, check):
        seen.update(cmd=cmd, env=env)

    monkeypatch.setattr(lab_etcd, "run", fake_run)
    monkeypatch.setenv("ETCDCTL_ENDPOINTS", "http://192.0.2.1:2379")
    monkeypatch.setenv("ETCDCTL_DIAL_TIMEOUT", "9s")
    lab_etcd.etcdctl(["http://10.0.0.1:2379"], "endpoint", "health")
    assert "--endpoints=http://10.0.0.1:2379" in seen["cmd"]
    assert seen["env"]["ETCDCTL_API"] == "3"
    assert not [k for k in seen["env"] if k.startswith("ETCDCTL_") and k != "ETCDCTL_API"]
