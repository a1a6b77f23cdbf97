"""schemathesis fuzzes the fleet API against its OpenAPI description (fleetd.api.openapi), with
a real fleetd API server on a real etcd: no 5xx, no hang, no response outside the schema, for
every operation, with a bounded number of examples (FLEET_FUZZ_EXAMPLES, default 10, and a fixed
seed, FLEET_FUZZ_SEED, so CI runs are reproducible)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fleetd.model import DesiredState, Machine, Placement, Unit
from fleetd.unit.file import UnitFile

from _api_server import HELLO_OPTIONS, ThreadedApiServer, publish_state, register_machine

HERE = Path(__file__).resolve().parents[1]  # tests/: _schemathesis_hooks.py
MID = "f" * 32
HELLO = UnitFile.from_options([(o["section"], o["name"], o["value"]) for o in HELLO_OPTIONS])
# Server-Sent Events stream forever whatever the query: not fuzzed (tests/_schemathesis_hooks.py)
EXCLUDED = ("/dashboard/events",)
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


async def _seed(reg) -> None:
    lease = await register_machine(reg, MID, "127.0.0.1", ttl=600)
    await reg.create_unit(Unit("hello.service", HELLO, DesiredState.LAUNCHED))
    await reg.campaign(MID, lease)
    await reg.apply_schedule(fence_machine_id=MID, place=[Placement("hello.service", MID, HELLO.hash,
                                                                     DesiredState.LAUNCHED)])
    await publish_state(reg, lease, "hello.service", MID, HELLO.hash)


@pytest.mark.slow
@pytest.mark.deep
def test_schemathesis_finds_nothing(etcd_settings, tmp_path):
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if exe is None:
        pytest.fail("schemathesis is not installed (pip install -e .[test])")
    with ThreadedApiServer(etcd_settings, tmp_path / "srv", Machine(MID, "127.0.0.1")) as srv:
        srv.run(_seed(srv.harness.registry))
        base = f"http://{srv.harness.server.tcp_addresses[0]}"
        env = dict(os.environ, SCHEMATHESIS_HOOKS="_schemathesis_hooks",
                   PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
        cmd = [exe, "run", f"{base}/fleet/v1/openapi.json", "--url", base,
               "--checks", CHECKS, "--max-examples", os.environ.get("FLEET_FUZZ_EXAMPLES", "10"),
               "--seed", os.environ.get("FLEET_FUZZ_SEED", "17"), "--phases", "examples,coverage,fuzzing",
               "--request-timeout", "10", "--max-response-time", "10", "--generation-database", "none",
               "--continue-on-failure", "--suppress-health-check", "all", "--no-color"]
        for path in EXCLUDED:
            cmd += ["--exclude-path", path]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    print(out[-4000:])
    assert proc.returncode == 0, out[-8000:]
    ran = re.search(r"(\d+) generated, (\d+) passed", out)
    assert ran and int(ran.group(1)) > 100 and ran.group(1) == ran.group(2), out[-3000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", out)
    assert selected, out[-3000:]
    # every operation of the document (as schemathesis counts them) but the excluded
    assert int(selected.group(2)) >= 45 and int(selected.group(1)) == int(selected.group(2)) - len(EXCLUDED)
    assert f"Tested: {selected.group(1)}" in out
