"""fleetctl run / run-pod: the units they compose (pure, no cluster: --print and the helpers)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from fleetctl.cli import CommandFailed, cli
from fleetctl.containers import ContainerOptions, compose_unit, parse_container_arg, pod_units
from fleetd.container.render import ImageInfo, NodeFacts, render_unit
from fleetd.unit.container import container_spec
from fleetd.unit.file import UnitFile
from fleetd.unit.requirements import requirements_of

IMAGE = ImageInfo("busybox", "sha256:" + "cd" * 32, "/r")


def printed_units(*args: str) -> dict[str, UnitFile]:
    """The units `fleetctl ... --print` composes (--print goes before a `--` command)."""
    args = list(args)
    at = args.index("--") if "--" in args else len(args)
    result = CliRunner().invoke(cli, ["--driver", "etcd", *args[:at], "--print", *args[at:]],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    units, name, lines = {}, None, []
    for line in result.output.splitlines(keepends=True):
        if line.startswith("# ") and line.strip().endswith(".service"):
            if name:
                units[name] = UnitFile.parse("".join(lines).strip() + "\n")
            name, lines = line[2:].strip(), []
        else:
            lines.append(line)
    units[name] = UnitFile.parse("".join(lines).strip() + "\n")
    return units


def test_run_composes_a_validated_container_unit():
    result = CliRunner().invoke(cli, ["--driver", "etcd", "run", "web", "--image", "busybox", "--port", "8080",
                                      "--env", "MSG=hello world", "--memory", "64M", "--cpus", "0.5",
                                      "--runtime", "nspawn", "--restart", "always", "--print",
                                      "--", "httpd", "-f", "-p", "8080", "-h", "/www", "50%"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# web.service\n")
    unit = UnitFile.parse(result.output.split("\n", 1)[1])
    spec = container_spec(unit, "web.service")
    assert spec.image == "busybox" and spec.runtime == "nspawn"
    assert spec.command == ("httpd", "-f", "-p", "8080", "-h", "/www", "50%")  # % kept literal
    assert spec.environment == (("MSG", "hello world"),)
    assert (spec.memory, spec.cpus) == (64 << 20, 0.5)
    assert unit.value("Service", "Restart") == "always"
    assert requirements_of(unit, "web.service").memory == 64 << 20
    words = render_unit("web.service", unit, NodeFacts(), IMAGE)
    assert "50%%" in words  # literal for systemd too


def test_run_count_with_port_spreads_instances():
    units = printed_units("run", "web", "--image", "busybox", "--port", "80", "--count", "3",
                          "--conflicts", "db*", "--", "httpd")
    assert list(units) == ["web@1.service", "web@2.service", "web@3.service"]
    for name, unit in units.items():
        assert requirements_of(unit, name).conflicts == ("db*", "web@*.service")


def test_run_global_and_placement_options():
    (unit,) = printed_units("run", "agent", "--image", "busybox", "--global", "--metadata", "disk=ssd",
                            "--", "sleep", "1000").values()
    req = requirements_of(unit, "agent.service")
    assert req.is_global and [(c.key, c.value) for c in req.metadata] == [("disk", "ssd")]


@pytest.mark.parametrize("args,message", [
    (["run", "web", "--image", "busybox", "--global", "--count", "2", "--", "sh"], "cannot be combined"),
    (["run", "web@1", "--image", "busybox", "--", "sh"], "invalid name"),
    (["run", "web", "--image", "bad image", "--", "sh"], "[X-Container] Image: invalid image reference"),
    (["run", "web", "--image", "busybox", "--port", "99999", "--", "sh"], "[X-Container] Port:"),
    (["run", "web", "--image", "busybox", "--env", "NOEQUALS", "--", "sh"], "--env 'NOEQUALS': expected KEY=VALUE"),
])
def test_run_refuses_bad_input_with_one_line(args, message):
    result = CliRunner().invoke(cli, ["--driver", "etcd", *args[:2], *args[2:-2], "--print", *args[-2:]])
    assert result.exit_code == 1
    assert message in result.output


def test_pod_units_bind_helpers_to_the_main_container():
    units = dict(pod_units("shop", [
        parse_container_arg("web --image busybox --port 8080 -- httpd -f -p 8080"),
        parse_container_arg("log --image busybox --runtime nspawn -- sh -c 'while sleep 1; do date; done'"),
    ], conflicts=["other*"]))
    assert list(units) == ["shop-web.service", "shop-log.service"]
    main, helper = units["shop-web.service"], units["shop-log.service"]
    assert requirements_of(main, "shop-web.service").conflicts == ("other*",)
    assert requirements_of(helper, "shop-log.service").machine_of == ("shop-web.service",)
    assert helper.values("Unit", "BindsTo") == ["shop-web.service"]
    assert helper.values("Unit", "After") == ["shop-web.service"]
    assert container_spec(helper, "shop-log.service").command == ("sh", "-c", "while sleep 1; do date; done")


def test_pod_errors():
    with pytest.raises(CommandFailed, match="distinct"):
        pod_units("p", [parse_container_arg("a --image busybox -- sh"), parse_container_arg("a --image busybox -- sh")])
    with pytest.raises(CommandFailed, match="--image"):
        parse_container_arg("a -- sh")
    with pytest.raises(CommandFailed, match="No closing quotation"):
        parse_container_arg("a --image busybox -- sh -c 'x")


def test_run_pod_print():
    units = printed_units("run-pod", "shop", "-c", "web --image busybox -- httpd -f", "-c", "x --image busybox -- sleep 9")
    assert list(units) == ["shop-web.service", "shop-x.service"]


def test_compose_unit_keeps_percent_literal():
    unit = compose_unit("w.service", ContainerOptions(image="busybox", command=("echo", "%i", "100%")))
    assert container_spec(unit, "w@5.service").command == ("echo", "%i", "100%")


def test_container_commands_are_imported_only_when_needed():
    """`fleetctl start` does not import the container commands; `run`, abbreviations and --help
    still find them (processes of their own: this test module imported fleetctl.containers
    already). The runs fork from the worker's full-CLI server (tests/_forked_cli.py), which
    imported what the cold probe imports: so they too start without the container commands."""
    import os
    import subprocess
    import sys

    from _forked_cli import PRELOAD, SHARED_PRELOAD, shared

    def fleetctl(*args: str) -> subprocess.CompletedProcess:
        return shared().run(list(args), cwd=os.getcwd(), env=dict(os.environ), timeout=30)

    probe = subprocess.run([sys.executable, "-c", "import importlib, sys\n"
                            "for name in sys.argv[1:]: importlib.import_module(name)\n"
                            "print(sorted({'fleetctl.containers', 'fleetctl.commands.containers'} & set(sys.modules)))",
                            *PRELOAD, *SHARED_PRELOAD],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "[]", probe.stderr
    assert "fleetctl.cli" in PRELOAD
    assert fleetctl("run", "--help").stdout.startswith("Usage: fleetctl run [OPTIONS]")
    assert fleetctl("run-p", "--help").stdout.startswith("Usage: fleetctl run-pod [OPTIONS]")
    assert "run-pod" in fleetctl("--help").stdout
    ambiguous = fleetctl("r")
    assert ambiguous.returncode == 2 and "could be restart, run, run-pod" in ambiguous.stderr
