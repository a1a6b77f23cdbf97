"""The demo (the README's main job, `./scripts/demo.sh`): a lab cluster showing the three uses.

1. unit files submitted and started with fleetctl: a plain unit, a global unit;
2. containers from an image: three busybox web servers (units/web@.service), one per machine,
   each with a sidekick placed next to it (MachineOf=, a pod of two units);
3. their service found through etcd: `fleetctl list-endpoints`, a `dig` answer from fleetd's
   DNS, and an HTTP request through nginx whose upstreams fleet-confd renders
   (units/nginx-confd.service, a global unit);
and the dashboard's address. Every step is a command a user can type after
`eval "$(fleet-lab env --name NAME)"` (fleetctl on the API driver, TLS client certificate),
printed before its output. Running it again on the same lab reuses the lab and the units.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Callable

from fleetd.errors import LabError

from .lab import Lab, list_labs
from .provision import install_commands, provide_busybox
from .sysutil import eventually

REPO = Path(__file__).resolve().parent.parent
DOMAIN = "fleet.local"
PLAIN_UNITS = ("units/hello.service", "units/global-monitor.service")
WEB_UNITS = tuple(f"units/web@{i}.service" for i in (1, 2, 3))
SIDEKICKS = tuple(f"units/web-discovery@{i}.service" for i in (1, 2, 3))
PROXY_UNIT = "units/nginx-confd.service"
WAIT = 120.0  # seconds for the endpoints and the proxy (a loaded machine is slow)


class Demo:
    def __init__(self, lab: Lab, echo: Callable[[str], None]) -> None:
        self.lab = lab
        self.echo = echo
        self.env = {**os.environ, **lab.user_env()}
        self.fleetctl_exe = lab.fleetctl_command()

    def run(self, argv: list[str], *, check: bool = True, timeout: float = 180.0) -> str:
        """Print `$ argv` (fleetctl as a user types it), run it in the checkout with the user's
        environment, print its output; return stdout."""
        self.echo("$ " + shlex.join(argv))
        real = [*self.fleetctl_exe, *argv[1:]] if argv[0] == "fleetctl" else argv
        proc = subprocess.run(real, cwd=self.lab.checkout, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        for text in (proc.stdout, proc.stderr):
            if text.strip():
                self.echo(text.rstrip())
        if check and proc.returncode != 0:
            raise LabError(f"demo: `{shlex.join(argv)}` failed with exit status {proc.returncode} (output above)")
        return proc.stdout

    def quiet(self, *args: str) -> str:
        """fleetctl's stdout, not printed ("" if it failed: the callers poll)."""
        proc = subprocess.run([*self.fleetctl_exe, *args], env=self.env, capture_output=True, text=True, timeout=60)
        return proc.stdout if proc.returncode == 0 else ""

    def passing(self) -> list[dict]:
        try:
            rows = json.loads(self.quiet("list-endpoints", "web", "--output", "json") or "[]")
        except ValueError:
            return []
        return [r for r in rows if r.get("health") == "passing"]


def _name_flag(name: str) -> str:
    """` --name NAME` unless NAME is what fleet-lab picks anyway ($FLEETLAB_NAME or "lab")."""
    return "" if name == os.environ.get("FLEETLAB_NAME", "lab") else f" --name {name}"


def _section(echo: Callable[[str], None], title: str) -> None:
    echo("")
    echo(f"=== {title} ===")


def run_demo(name: str = "lab", nodes: int = 3, *, echo: Callable[[str], None] = print, keep: bool = True) -> Lab:
    """Boot (or reuse) the lab, run the demo on it, print how to go on. Returns the lab."""
    if name in list_labs():
        lab = Lab.attach(name)
        echo(f"lab {name}: already up, reusing it")
    else:
        echo(f"lab {name}: booting {nodes} nodes (systemd-nspawn, etcd, fleetd; TLS and RBAC) ...")
        started = time.monotonic()
        lab = Lab(name, nodes=nodes).up(wait_fleetd=True)
        echo(f"lab {name}: up in {time.monotonic() - started:.1f}s")
    try:
        lab.wait_fleetd()
        install_commands(lab)
        provide_busybox(lab, echo)
        try:
            _show(lab, Demo(lab, echo), echo)
        except AssertionError as exc:  # an `eventually` that timed out: one line, as other errors
            raise LabError(f"demo: {exc}".splitlines()[0]) from None
    except BaseException:
        if not keep:
            lab.down()
        raise
    echo("")
    if keep:
        echo("The lab keeps running. Go on with:")
        echo(f'  . .venv/bin/activate; eval "$(fleet-lab env{_name_flag(name)})"')
        echo("  fleetctl list-units; fleetctl journal web@1.service; fleetctl stop web@2.service")
        echo(f"Tear it down with: .venv/bin/fleet-lab down{_name_flag(name)}")
    else:
        lab.down()
        echo(f"lab {name}: down")
    return lab


def _show(lab: Lab, demo: Demo, echo: Callable[[str], None]) -> None:
    echo(f'(each command below runs as in your shell after: eval "$(fleet-lab env{_name_flag(lab.name)})")')
    _section(echo, "1. unit files, submitted and started with fleetctl")
    demo.run(["fleetctl", "list-machines"])
    demo.run(["fleetctl", "start", *PLAIN_UNITS])
    demo.run(["fleetctl", "cat", "global-monitor.service"])

    _section(echo, "2. containers from an image (busybox httpd, no Python in it)")
    demo.run(["fleetctl", "images"])
    demo.run(["fleetctl", "start", *WEB_UNITS])
    echo("(each web@N has a sidekick on its machine: MachineOf=, BindsTo= -- a pod of two units)")
    demo.run(["fleetctl", "start", *SIDEKICKS])

    _section(echo, "3. the service \"web\", discovered through etcd")
    demo.run(["fleetctl", "start", PROXY_UNIT])
    eventually(lambda: len(demo.passing()) == len(WEB_UNITS), WAIT, "three passing endpoints of web", interval=1.0)
    demo.run(["fleetctl", "list-endpoints", "web"])
    node = lab.nodes[0]
    demo.run(["dig", f"@{node.ip}", "+short", f"web.{DOMAIN}"])
    demo.run(["dig", f"@{node.ip}", "+short", "SRV", f"_web._tcp.{DOMAIN}"])
    proxy = f"http://{node.ip}/"
    eventually(lambda: _proxy_answers(proxy), WAIT, "nginx on the first node to answer", interval=1.0)
    for _ in range(2):
        demo.run(["curl", "-sS", "-D", "-", proxy])
    demo.run(["fleetctl", "list-units"])
    demo.run(["fleetctl", "status", "web@1.service"])

    _section(echo, "the dashboard")
    url = lab.dashboard_url()
    env = demo.env
    if "FLEETCTL_CERT_FILE" in env:
        echo(f"{url} (every node serves it on the same port; TLS with client certificates: give a browser "
             "the operator certificate, e.g.)")
        echo(f'  curl --cacert "$FLEETCTL_CA_FILE" --cert "$FLEETCTL_CERT_FILE" --key "$FLEETCTL_KEY_FILE" {url}')
    else:
        echo(f"{url} (every node serves it on the same port)")


def _proxy_answers(url: str) -> bool:
    proc = subprocess.run(["curl", "-sS", "-m", "3", url], capture_output=True, text=True, timeout=10)
    return proc.returncode == 0 and "fleet busybox image" in proc.stdout
