"""After a lab run with the default security (issue 17): no private key material of the lab's
PKI in any node's journal, any process's command line (host and nodes), any unit file on disk,
fleet.conf, /metrics, or fleetctl's error messages; and the keys are root-only files.

The lab has no etcd password at all (etcd takes the user from the client certificate's CN), so
key material is the only secret; tests/test_secrets.py covers etcd passwords in-process.
"""

from __future__ import annotations

import subprocess
import urllib.request

import pytest

from fleetlab.sysutil import eventually

pytest_plugins = ["fleetlab.pytest_plugin"]
pytestmark = pytest.mark.lab(nodes=2, wait_fleetd=True)

UNIT = "[Unit]\nDescription=secrets probe\n\n[Service]\nExecStart=/bin/sh -c 'while true; do sleep 1; done'\n"


def key_lines(lab) -> list[str]:
    """Every base64 line of every private key the lab made (CA, machines, clients)."""
    lines = []
    for key in sorted(lab.pki.dir.glob("*.key")):
        lines += [line for line in key.read_text().splitlines() if line and not line.startswith("-----")]
    assert len(lines) >= 6  # ca + 2 machines + root, admin, viewer
    return lines


def test_no_key_material_leaks(lab, tmp_path):
    secrets = key_lines(lab)
    unit = tmp_path / "probe.service"
    unit.write_text(UNIT)
    lab.fleetctl("start", str(unit), timeout=120)
    eventually(lambda: "active" in lab.fleetctl("list-units").stdout, 30, "the probe to run")
    # through the API: relayed status/journal (node-to-node mTLS), a refused request, /metrics
    api = lab.fleetctl_api_args(1)
    lab.fleetctl(*api, "status", "probe.service", check=False)
    lab.fleetctl(*api, "journal", "probe.service", check=False)
    viewer = lab.fleetctl(*lab.fleetctl_api_args(1, "viewer"), "stop", "probe.service", check=False)
    assert viewer.returncode == 1 and "forbidden" in viewer.stderr
    wrong_key = lab.fleetctl(*api[:-2], "--key-file", str(lab.pki.paths("viewer").key), "list-units", check=False)
    assert wrong_key.returncode != 0
    with urllib.request.urlopen(f"{lab.api_url(1)}/metrics", context=lab.api_ssl_context(), timeout=10) as r:
        metrics = r.read().decode()

    texts = {"metrics": metrics, "fleetctl errors": viewer.stdout + viewer.stderr + wrong_key.stdout + wrong_key.stderr,
             "host ps": subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout}
    for node in lab.nodes:
        texts[f"{node.name} journal"] = node.exec(["journalctl", "--no-pager", "-o", "cat"], timeout=60).stdout
        texts[f"{node.name} ps"] = node.exec(["ps", "-eo", "args"]).stdout
        texts[f"{node.name} unit files"] = node.exec(
            ["sh", "-c", "cat /run/fleet/units/* /run/systemd/system/*.service /etc/systemd/system/fleet*.service "
                         "/etc/fleet/fleet.conf 2>/dev/null; true"]).stdout
        # the node's key: root only
        assert node.exec(["stat", "-c", "%a %U", "/etc/fleet/pki/machine.key"]).stdout.split() == ["600", "root"]
        assert node.exec(["stat", "-c", "%a", "/etc/fleet/pki"]).stdout.strip() == "700"
        conf = node.exec(["cat", "/etc/fleet/fleet.conf"]).stdout
        assert "password" not in conf and "etcd_keyfile=/etc/fleet/pki/machine.key" in conf
    assert "probe.service" in texts[f"{lab.nodes[0].name} journal"] + texts[f"{lab.nodes[1].name} journal"]
    for where, text in texts.items():
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"key material in {where}"
    for key in lab.pki.dir.glob("*.key"):
        assert key.stat().st_mode & 0o777 == 0o600, key
    lab.fleetctl("destroy", "probe.service", check=False)


def test_acceptance_of_the_defaults(lab):
    """Issue 17's acceptance on a lab with the defaults: etcd refuses etcdctl without a client
    certificate; the TCP API and the image server refuse a client without a cluster certificate
    (the TLS handshake fails) and serve one with it; a read-only certificate lists units but
    gets 403 on start."""
    import json
    import os
    import ssl
    import urllib.error

    ca, _, _ = lab.client_files()
    env = {"ETCDCTL_API": "3", "PATH": os.environ["PATH"]}
    plain = subprocess.run(["etcdctl", f"--endpoints={lab.etcd_endpoints[0]}", f"--cacert={ca}",
                            "--command-timeout=3s", "get", "--prefix", lab.etcd_key_prefix], env=env,
                           capture_output=True, text=True, timeout=30)
    assert plain.returncode != 0
    with_cert = subprocess.run(["etcdctl", f"--endpoints={lab.etcd_endpoints[0]}", *lab.etcd_tls.args(),
                                "get", "--prefix", "--keys-only", lab.etcd_key_prefix + "machines/"], env=env,
                               capture_output=True, text=True, timeout=30)
    assert with_cert.returncode == 0 and "/object" in with_cert.stdout

    no_cert = ssl.create_default_context(cafile=ca)
    no_cert.check_hostname = False
    image_url = f"https://{lab.node(1).ip}:7380/fleet/images/v1/images"
    for url in (f"{lab.api_url(1)}/fleet/v1/units", image_url):
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(url, context=no_cert, timeout=10).read()
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):  # and no plaintext
            urllib.request.urlopen(url.replace("https:", "http:"), timeout=10).read()

    viewer = lab.api_ssl_context("viewer")
    with urllib.request.urlopen(f"{lab.api_url(1)}/fleet/v1/units", context=viewer, timeout=10) as r:
        assert r.status == 200
    body = json.dumps({"desiredState": "launched", "options": [
        {"section": "Service", "name": "ExecStart", "value": "/bin/true"}]}).encode()
    req = urllib.request.Request(f"{lab.api_url(1)}/fleet/v1/units/ro.service", data=body, method="PUT",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, context=viewer, timeout=10)
    assert info.value.code == 403 and json.loads(info.value.read())["error"]["code"] == 403
    assert "ro.service" not in lab.fleetctl("list-unit-files").stdout
    with urllib.request.urlopen(image_url, context=viewer, timeout=10) as r:
        assert r.status == 200 and json.loads(r.read())["machineID"] == lab.node(1).machine_id


def test_schemathesis_against_a_lab_fleetd(lab, tmp_path):
    """schemathesis on node 1's TCP API over mutual TLS, as the read-only user (so the fuzzer
    changes nothing in the lab: every write must be a documented 403), bounded: no 5xx, no hang,
    no response outside the OpenAPI document. tests/test_api_fuzz.py fuzzes writes in-process."""
    import os
    import re
    import shutil
    import sys
    from pathlib import Path

    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    assert exe, "schemathesis is not installed (pip install -e .[test])"
    ca, cert, key = lab.client_files("viewer")
    base = lab.api_url(1)
    here = Path(__file__).resolve().parents[1]  # tests/: _schemathesis_hooks.py
    env = dict(os.environ, SCHEMATHESIS_HOOKS="_schemathesis_hooks",
               PYTHONPATH=os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [exe, "run", f"{base}/fleet/v1/openapi.json", "--url", base, "--tls-verify", ca,
         "--request-cert", cert, "--request-cert-key", key,
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
         # the dashboard's event stream never ends (it streams whatever the query says); its
         # statuses are reached in tests/etcd/test_api_openapi.py, as in tests/etcd/test_api_fuzz.py
         "--exclude-path", "/dashboard/events",
         "--max-examples", os.environ.get("FLEET_FUZZ_EXAMPLES", "5"), "--seed", "17",
         "--phases", "examples,coverage,fuzzing", "--request-timeout", "15", "--max-response-time", "15",
         "--generation-database", "none", "--continue-on-failure", "--suppress-health-check", "all", "--no-color"],
        env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    ran = re.search(r"(\d+) generated, (\d+) passed", out)
    assert ran and ran.group(1) == ran.group(2) and int(ran.group(1)) > 50, out[-3000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", out)
    assert selected, out[-3000:]
    # every operation of the document (as schemathesis counts them) but the excluded stream
    assert int(selected.group(1)) == int(selected.group(2)) - 1 and f"Tested: {selected.group(1)}" in out
    assert lab.fleetctl("list-unit-files").stdout.count("\n") <= 2  # the read-only fuzzer made nothing
