"""An etcd password never shows: not in a config's repr, fleetd's log, an error message or
/metrics (real etcd with password authentication, a real fleetd API server)."""

from __future__ import annotations

import logging
import subprocess

import pytest

from fleetd.api.server import ApiServer
from fleetd.config import EtcdSettings, FleetConfig
from fleetd.errors import FleetError
from fleetd.registry import Registry
from fleetlab.testing.etcd import EtcdServer

PASSWORD = "s3cr3t-Pa55-w0rd-17"
WRONG = "wr0ng-Pa55-w0rd-42"


@pytest.fixture(scope="module")
def auth_etcd():
    with EtcdServer() as server:
        def ctl(*args: str) -> None:
            subprocess.run(["etcdctl", f"--endpoints={server.endpoint}", *args], check=True, capture_output=True,
                           env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})

        ctl("user", "add", f"root:{PASSWORD}")
        ctl("user", "grant-role", "root", "root")
        ctl("auth", "enable")
        yield server


async def test_password_is_nowhere(auth_etcd, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    good = EtcdSettings(endpoints=(auth_etcd.endpoint,), key_prefix="/sec/", username="root", password=PASSWORD,
                        request_timeout=3)
    cfg = FleetConfig(etcd=good, api_socket="", api_tcp="127.0.0.1:0", api_insecure_tcp=True)
    assert PASSWORD not in repr(cfg) and PASSWORD not in str(cfg.etcd)
    async with await Registry.connect(good) as reg:
        async with ApiServer(cfg, reg, use_socket_activation=False) as server:
            import aiohttp

            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://{server.tcp_addresses[0]}/metrics") as resp:
                    metrics = await resp.text()
                    assert resp.status == 200 and "fleet" in metrics
            assert PASSWORD not in metrics
    bad = EtcdSettings(endpoints=(auth_etcd.endpoint,), key_prefix="/sec/", username="root", password=WRONG,
                       request_timeout=3)
    with pytest.raises(FleetError) as info:
        reg = await Registry.connect(bad)
        try:
            await reg.list_units()
        finally:
            await reg.close()
    assert WRONG not in str(info.value) and "authentication failed" in str(info.value).lower()
    assert PASSWORD not in caplog.text and WRONG not in caplog.text


def test_password_flag_warns(tmp_path):
    from fleetd.daemon import build_parser, config_from_args

    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        cfg = config_from_args(build_parser().parse_args(["--etcd-username", "u", "--etcd-password", "p4ss"]))
    assert cfg.etcd.password == "p4ss" and "visible to every user in ps" in err.getvalue()
    assert "p4ss" not in err.getvalue()
