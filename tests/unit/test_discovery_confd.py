"""fleet-confd's render/check/replace/reload step (no etcd: the view is given), with the
example nginx template checked by a real `nginx -t` when nginx is installed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fleetd.discovery.confd import Template, apply, render_text
from fleetd.discovery.view import ServiceView
from fleetd.errors import FleetError
from fleetd.registry.services import CRITICAL, Endpoint

REPO = Path(__file__).resolve().parents[2]


def view(*hosts: str, sick: str = "") -> ServiceView:
    eps = [Endpoint("web", f"web@{i}.service", f"m{i}", h, 8080, "http", (), "passing", f"web-{i}")
           for i, h in enumerate(hosts, 1)]
    if sick:
        eps.append(Endpoint("web", "web@9.service", "m9", sick, 8080, health=CRITICAL, label="web-9"))
    return ServiceView.build(eps)


TEMPLATE = "{% for ep in service('web') %}server {{ ep.host }}:{{ ep.port }};\n{% endfor %}"


def setup(tmp_path: Path, text: str = TEMPLATE) -> tuple[Template, Path]:
    src = tmp_path / "t.j2"
    src.write_text(text)
    log = tmp_path / "reloads"
    return Template(src, tmp_path / "out.conf"), log


def test_renders_healthy_only_writes_and_reloads_once_then_only_on_change(tmp_path):
    tpl, log = setup(tmp_path)
    reload = f"sh -c 'echo reload >> {log}'"
    out = apply([tpl], view("10.0.0.1", "10.0.0.2", sick="10.0.0.9"), "test -s {src}", reload)
    assert out.written == [tpl.dest] and not out.failed
    assert tpl.dest.read_text() == "server 10.0.0.1:8080;\nserver 10.0.0.2:8080;\n"
    assert log.read_text() == "reload\n"
    out = apply([tpl], view("10.0.0.1", "10.0.0.2"), "test -s {src}", reload)  # same text: nothing
    assert out.written == [] and log.read_text() == "reload\n"
    apply([tpl], view("10.0.0.2"), "test -s {src}", reload)
    assert tpl.dest.read_text() == "server 10.0.0.2:8080;\n" and log.read_text() == "reload\nreload\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.conf")] == []  # no staged leftovers


def test_failed_check_keeps_the_old_file_and_says_why(tmp_path, caplog):
    tpl, log = setup(tmp_path)
    tpl.dest.write_text("old\n")
    out = apply([tpl], view("10.0.0.1"), "sh -c 'echo bad upstream >&2; exit 3'", f"sh -c 'echo r >> {log}'")
    assert tpl.dest.read_text() == "old\n" and not log.exists()
    assert out.failed == [f"{tpl.dest}: check command failed (exit status 3: bad upstream); the old file stays"]
    assert "check command failed" in caplog.text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.conf")] == []


def test_template_errors_are_one_line():
    with pytest.raises(FleetError, match="template x.j2: 'nope' is undefined"):
        render_text("{{ nope }}", view(), name="x.j2")


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx (nginx-light) not installed")
def test_example_nginx_template_passes_nginx_t(tmp_path):
    example = REPO / "templates" / "nginx-web.conf.j2"
    tpl = Template(example, tmp_path / "nginx.conf")
    out = apply([tpl], view("10.0.0.1", "10.0.0.2"), "nginx -t -q -e stderr -c {src}")
    assert out.written == [tpl.dest], out.failed
    text = tpl.dest.read_text()
    assert "server 10.0.0.1:8080;" in text and "server 10.0.0.2:8080;" in text
    out = apply([tpl], view(), "nginx -t -q -e stderr -c {src}")  # no endpoint: still a valid config
    assert out.written == [tpl.dest] and "down;" in tpl.dest.read_text()
