"""Container units: [X-Container] validation and rendering (pure functions, table tests)."""

from __future__ import annotations

import re

import pytest

from fleetd.agent.plan import DesiredUnit, desired_aware_hash, file_hash, observe, plan, TaskKind
from fleetd.container.marker import stored_hash_of
from fleetd.container.render import (
    CannotRun,
    ImageInfo,
    NodeFacts,
    container_name,
    render_or_explain,
    render_unit,
    sd_quote,
)
from fleetd.unit.container import Bind, Port, container_spec, validate_container
from fleetd.errors import InvalidUnitOptions
from fleetd.model import DesiredState
from fleetd.unit.file import UnitFile
from fleetd.unit.requirements import requirements_of, validate_unit

FACTS = NodeFacts(fleet_run="/opt/fleet/bin/fleet-run", nspawn="/usr/bin/systemd-nspawn",
                  images_dir="/var/lib/fleet/images")
DIGEST = "sha256:" + "ab" * 32
IMAGE = ImageInfo("busybox", DIGEST, f"/var/lib/fleet/images/images/{'ab' * 32}/rootfs")


def unit(container: str, extra: str = "") -> UnitFile:
    return UnitFile.parse(f"[Unit]\nDescription=test\n\n{extra}[X-Container]\n{container}")


# --------------------------------------------------------------------------- systemd quoting


def systemd_words(line: str) -> list[str]:
    """A reference reader of an Exec*= line as systemd reads it (extract_first_word with
    UNQUOTE|CUNESCAPE|RELAX, then %% -> % and $$ -> $): the test's independent oracle."""
    line = re.sub(r"%%", "\0PCT\0", line)
    assert "%" not in line, f"unescaped specifier in {line!r}"
    line = line.replace("\0PCT\0", "%")
    words, cur, i, have, quote = [], [], 0, False, None
    escapes = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'", ";": ";"}
    while i < len(line):
        ch = line[i]
        if ch == "\\":
            nxt = line[i + 1]
            if nxt == "x":
                cur.append(chr(int(line[i + 2:i + 4], 16)))
                i += 4
            else:
                cur.append(escapes[nxt])
                i += 2
            have = True
            continue
        if quote:
            if ch == quote:
                quote = None
            else:
                cur.append(ch)
        elif ch in "\"'":
            quote, have = ch, True
        elif ch in " \t":
            if have:
                words.append("".join(cur))
                cur, have = [], False
        else:
            cur.append(ch)
            have = True
        i += 1
    assert quote is None, f"unbalanced quotes in {line!r}"
    if have:
        words.append("".join(cur))
    out = []
    for w in words:
        assert not re.search(r"(?<!\$)\$(?!\$)", w.replace("$$", "")), f"unescaped $ in {w!r}"
        out.append(w.replace("$$", "$"))
    return out


def exec_start(text: str, key: str = "ExecStart") -> list[str]:
    """The words of the (continued) Exec line `key` of a rendered unit."""
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(key + "="))
    joined = lines[start][len(key) + 1:]
    i = start
    while joined.endswith("\\"):
        i += 1
        joined = joined[:-1] + " " + lines[i]
    return systemd_words(joined)


def service_values(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.split("\n") if line.startswith(key + "=")]


@pytest.mark.parametrize("word", [
    "plain", "/bin/httpd", "a b", 'say "hi"', "50%", "%i", "$HOME", "${X}", "tab\there", "new\nline",
    "back\\slash", "'single'", ";", "", "é ü", "a=b,c:d", "--env=K=two words", "\x01ctl",
])
def test_sd_quote_round_trips_through_systemds_rules(word):
    assert systemd_words(sd_quote(word)) == [word]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("body,key,fragment", [
    ("Image=busybox\nFoo=1\n", "Foo", "unknown key"),
    ("Command=sh\n", "Image", "required"),
    ("Image=bad image!\n", "Image", "invalid image reference"),
    ("Image=sha256:xyz\n", "Image", "invalid image reference"),
    ("Image=busybox\nRuntime=docker\n", "Runtime", "'docker' is not one of launcher, nspawn"),
    ("Image=busybox\nPort=0\n", "Port", "PORT[/tcp|/udp]"),
    ("Image=busybox\nPort=80/sctp\n", "Port", "PORT[/tcp|/udp]"),
    ("Image=busybox\nPort=8080\nNetwork=none\n", "Port", "needs Network=host"),
    ("Image=busybox\nNetwork=bridge\n", "Network", "not one of host, none"),
    ("Image=busybox\nBind=/a\n", "Bind", "SRC:DST"),
    ("Image=busybox\nBind=rel:/b\n", "Bind", "absolute path"),
    ("Image=busybox\nBind=/a:/b:rx\n", "Bind", "SRC:DST"),
    ("Image=busybox\nBind=/a/../etc:/b\n", "Bind", "absolute path"),
    ("Image=busybox\nEnvironment=1X=2\n", "Environment", "NAME=VALUE"),
    ("Image=busybox\nEnvironment=NOVALUE\n", "Environment", "NAME=VALUE"),
    ("Image=busybox\nEnvironment=\"A=unterminated\n", "Environment", "No closing quotation"),
    ("Image=busybox\nMemory=lots\n", "Memory", "not a size"),
    ("Image=busybox\nMemory=1K\n", "Memory", "too small"),
    ("Image=busybox\nCPUs=0\n", "CPUs", "number of cores"),
    ("Image=busybox\nCPUs=two\n", "CPUs", "number of cores"),
    ("Image=busybox\nTasks=-1\n", "Tasks", "positive integer"),
    ("Image=busybox\nStopTimeout=soon\n", "StopTimeout", "number of seconds"),
    ("Image=busybox\nPrivileged=maybe\n", "Privileged", "boolean"),
    ("Image=busybox\nHostname=-bad-\n", "Hostname", "not a valid hostname"),
    ("Image=busybox\nUser=a b\n", "User", "user[:group]"),
    ("Image=busybox\nWorkingDirectory=relative\n", "WorkingDirectory", "absolute path"),
    ("Image=busybox\nImage=alpine\n", "Image", "given more than once"),
    ("Image=busybox\nCommand=sh -c 'unterminated\n", "Command", "No closing quotation"),
])
def test_invalid_container_sections_name_unit_and_key(body, key, fragment):
    with pytest.raises(InvalidUnitOptions) as err:
        validate_container(unit(body), "web.service")
    message = str(err.value)
    assert message.startswith(f"unit web.service: [X-Container] {key}: "), message
    assert fragment in message


def test_submit_validation_hooks_into_validate_unit():
    with pytest.raises(InvalidUnitOptions, match=r"unit web.service: \[X-Container\] Foo: unknown key"):
        validate_unit(unit("Image=busybox\nFoo=1\n"), "web.service")
    with pytest.raises(InvalidUnitOptions, match=r"ExecStart= cannot be combined"):
        validate_unit(unit("Image=busybox\n", "[Service]\nExecStart=/bin/true\n\n"), "web.service")
    validate_unit(unit("Image=busybox\nCommand=httpd -f\n"), "web.service")  # valid: no error
    with pytest.raises(InvalidUnitOptions, match=r"unit web.socket: \[X-Container\] is only for .service units"):
        validate_unit(unit("Image=busybox\n"), "web.socket")


def test_template_values_with_specifiers_are_checked_per_instance():
    tpl = unit("Image=%i\nEnvironment=N=%i\n")
    validate_container(tpl, "web@.service")  # nothing to check yet
    spec = container_spec(tpl, "web@busybox.service")
    assert spec.image == "busybox" and spec.environment == (("N", "busybox"),)
    ported = unit("Image=busybox\nPort=80%i\n")
    validate_container(ported, "web@.service")
    assert container_spec(ported, "web@1.service").ports == (Port(801),)
    with pytest.raises(InvalidUnitOptions, match="Port"):
        validate_container(ported, "web@x.service")  # 80x is no port
    with pytest.raises(InvalidUnitOptions, match="unknown key"):
        validate_container(unit("Image=%i\nBogus=1\n"), "web@.service")


def test_spec_fields():
    spec = container_spec(unit(
        'Image=busybox:1\nCommand=httpd -f -p 8080 -h "/w w"\nRuntime=nspawn\n'
        'Environment=A=1 "B=two words"\nEnvironment=C=%n\nPort=8080 53/udp\nBind=/srv:/data:ro /x:/y\n'
        "Hostname=web\nUser=nobody\nWorkingDirectory=/www\nNetwork=host\nMemory=64M\nCPUs=0.25\n"
        "Tasks=16\nStopTimeout=3\nPrivileged=no\n"), "web@1.service")
    assert spec.image == "busybox:1"
    assert spec.command == ("httpd", "-f", "-p", "8080", "-h", "/w w")
    assert spec.runtime == "nspawn"
    assert spec.environment == (("A", "1"), ("B", "two words"), ("C", "web@1.service"))
    assert spec.ports == (Port(8080, "tcp"), Port(53, "udp"))
    assert spec.binds == (Bind("/srv", "/data", True), Bind("/x", "/y", False))
    assert (spec.hostname, spec.user, spec.workdir) == ("web", "nobody", "/www")
    assert (spec.memory, spec.cpus, spec.tasks, spec.stop_timeout) == (64 << 20, 0.25, 16, 3.0)
    assert spec.cpu_quota_percent == 25 and not spec.privileged
    assert container_spec(UnitFile.parse("[Service]\nExecStart=/bin/true\n"), "x.service") is None


def test_container_limits_are_the_units_reservation():
    req = requirements_of(unit("Image=busybox\nMemory=512M\nCPUs=1.5\n"), "web.service")
    assert (req.cpu, req.memory) == (1.5, 512 << 20)
    explicit = unit("Image=busybox\nMemory=512M\n", "[Service]\nMemoryMax=1G\n\n")
    assert requirements_of(explicit, "web.service").memory == 1 << 30


# --------------------------------------------------------------------------- rendering


def test_plain_units_pass_through_unchanged():
    plain = UnitFile.parse("[Unit]\nDescription=x\n\n[Service]\nExecStart=/bin/sleep 1\n")
    assert render_unit("x.service", plain, FACTS, None) == plain.serialize()


LAUNCHER = unit(
    'Image=busybox\nCommand=httpd -f -p 80%i -h "/w w" $HOME 50%\nEnvironment=A=1 "B=two words"\n'
    "Bind=/srv:/data:ro\nWorkingDirectory=/www\nUser=nobody\nMemory=64M\nCPUs=0.5\nTasks=32\n"
    "StopTimeout=2\nPort=8081\n",
    "[Service]\nRestart=always\nTimeoutStopSec=30\n\n")


def test_launcher_rendering():
    text = render_unit("web@1.service", LAUNCHER, FACTS, IMAGE)
    assert stored_hash_of(text) == LAUNCHER.hash
    assert exec_start(text) == [
        "/opt/fleet/bin/fleet-run", "--detach", "--init", f"--name={container_name('web@1.service')}",
        f"--image={DIGEST}", "--images-dir=/var/lib/fleet/images", "--hostname=web-1",
        "--env=A=1", "--env=B=two words", "--bind=/srv:/data:ro", "--workdir=/www",
        "--user=nobody", "--private-users=no", "--",
        "httpd", "-f", "-p", "801", "-h", "/w w", "$HOME", "50%"]
    # fleet-run leaves the container's PID 1 to systemd and exits: systemd supervises it
    assert service_values(text, "Type") == ["forking"]
    assert service_values(text, "PIDFile") == [f"/run/fleet/containers/{container_name('web@1.service')}/init.pid"]
    assert exec_start(text, "ExecStopPost") == [
        "-/bin/rm", "-rf", "--one-file-system", f"/run/fleet/containers/{container_name('web@1.service')}"]
    assert service_values(text, "KillMode") == ["mixed"]
    assert service_values(text, "SuccessExitStatus") == ["137 143"]
    assert service_values(text, "MemoryMax") == [str(64 << 20)]
    assert service_values(text, "CPUQuota") == ["50%"]
    assert service_values(text, "TasksMax") == ["32"]
    assert service_values(text, "NoNewPrivileges") == ["yes"]
    assert "@debug" in service_values(text, "SystemCallFilter")[0]
    assert "@mount" not in service_values(text, "SystemCallFilter")[0]
    assert "CAP_SYS_MODULE" in service_values(text, "CapabilityBoundingSet")[0]
    # the user's [Service] options come after ours: theirs win (TimeoutStopSec=30 is last)
    assert service_values(text, "TimeoutStopSec") == ["2", "30"]
    assert service_values(text, "Restart") == ["always"]
    assert "\n[X-Container]" not in text and "Description=test" in text
    assert "8081/tcp" in text
    again = UnitFile.parse(text)  # the rendered text is a valid unit file
    assert again.value("Service", "KillMode") == "mixed"


def test_nspawn_rendering():
    spec_unit = unit("Image=busybox\nRuntime=nspawn\nCommand=httpd -f -p 8080\nEnvironment=A=1\n"
                     "Bind=/srv:/data:ro /rw:/rw\nWorkingDirectory=/www\nNetwork=none\nMemory=1G\n")
    text = render_unit("web.service", spec_unit, FACTS, IMAGE)
    words = exec_start(text)
    assert words[0] == "/usr/bin/systemd-nspawn"
    for flag in ("--keep-unit", "--register=no", "--as-pid2", "--console=pipe", "--quiet",
                 "--private-network", "--setenv=A=1", "--bind-ro=/srv:/data", "--bind=/rw:/rw",
                 "--chdir=/www", "--machine=web", "--hostname=web",
                 "--directory=/run/fleet/nspawn/web/skel",
                 f"--overlay={IMAGE.rootfs}:/run/fleet/nspawn/web/upper:/"):
        assert flag in words, flag
    assert words[words.index("--") + 1:] == ["httpd", "-f", "-p", "8080"]
    assert service_values(text, "RuntimeDirectory") == ["fleet/nspawn/web"]
    assert exec_start(text, "ExecStartPre") == ["/bin/mkdir", "-p", "/run/fleet/nspawn/web/skel/usr",
                                                "/run/fleet/nspawn/web/upper"]
    assert service_values(text, "Delegate") == ["yes"]
    assert service_values(text, "MemoryMax") == [str(1 << 30)]
    assert service_values(text, "KillMode") == ["mixed"]


def test_host_network_is_the_default_and_privileged_drops_hardening():
    for runtime in ("launcher", "nspawn"):
        text = render_unit("p.service", unit(f"Image=busybox\nCommand=sh\nRuntime={runtime}\nPrivileged=yes\n"),
                           FACTS, IMAGE)
        words = exec_start(text)
        assert "--net=none" not in words and "--private-network" not in words
        assert ("--privileged" if runtime == "launcher" else "--capability=all") in words
        for key in ("NoNewPrivileges", "SystemCallFilter", "CapabilityBoundingSet"):
            assert service_values(text, key) == [], (runtime, key)


def test_image_defaults_fill_in_command_env_workdir_and_user():
    image = ImageInfo("app", DIGEST, "/r", env=("PATH=/usr/bin:/bin", "A=image"),
                      entrypoint=("/entry",), cmd=("serve", "--port", "80"), workdir="/srv", user="app")
    text = render_unit("app.service", unit("Image=app\nEnvironment=A=unit\n"), FACTS, image)
    words = exec_start(text)
    assert words[words.index("--") + 1:] == ["/entry", "serve", "--port", "80"]
    assert "--env=PATH=/usr/bin:/bin" in words and "--env=A=unit" in words and "--env=A=image" not in words
    assert "--workdir=/srv" in words and "--user=app" in words


@pytest.mark.parametrize("image,fragment", [
    (CannotRun('image "busybox" not found on this machine (abcd1234) nor on any other machine'),
     'image "busybox" not found'),
    (ImageInfo("busybox", DIGEST, "/r"), "declares no Entrypoint or Cmd"),
    (None, "was not resolved"),
])
def test_units_that_cannot_run_fail_saying_why(image, fragment):
    u = unit("Image=busybox\n", "[Service]\nRestart=always\n\n[X-Fleet]\nConflicts=x*\n\n")
    text = render_unit("web.service", u, FACTS, image)
    assert stored_hash_of(text) == u.hash
    words = exec_start(text)
    assert words[:2] == ["/bin/sh", "-c"] and words[2] == 'echo "$0" >&2; exit 125'
    assert words[3].startswith("fleet: unit web.service: ") and fragment in words[3]
    assert service_values(text, "Type") == ["oneshot"]
    assert service_values(text, "Restart") == []  # no restart loop of a unit that cannot run
    assert "[X-Fleet]\nConflicts=x*" in text


def test_invalid_stored_container_unit_renders_as_cannot_run():
    text = render_or_explain("web.service", unit("Image=busybox\nFoo=1\n"), FACTS, IMAGE)
    assert "unknown key" in exec_start(text)[3]


@pytest.mark.parametrize("name,expected", [
    ("web.service", "web"), ("web-1.service", "web-1"), ("a.b.service", "a.b"),
    ("web@1.service", None), ("web@x:y.service", None), ("x" * 70 + ".service", None),
])
def test_container_names(name, expected):
    got = container_name(name)
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", got)
    if expected is not None:
        assert got == expected
    else:
        assert re.fullmatch(r".*-[0-9a-f]{6}", got)


def test_container_names_are_distinct():
    names = ["web@1.service", "web-1.service", "web:1.service", "web@1.socket", "a@b-c.service", "a-b@c.service"]
    assert len({container_name(n) for n in names}) == len(names)


def test_rendering_is_deterministic():
    assert render_unit("web@1.service", LAUNCHER, FACTS, IMAGE) == render_unit("web@1.service", LAUNCHER, FACTS, IMAGE)


# --------------------------------------------------------------------------- hashes and the plan


def test_file_hash_of_a_rendered_unit_is_the_stored_units_hash():
    text = render_unit("web@1.service", LAUNCHER, FACTS, IMAGE)
    assert file_hash("web@1.service", text) == LAUNCHER.hash
    assert UnitFile.parse(text).hash != LAUNCHER.hash


def test_adoption_and_rerendering_in_the_plan():
    name = "web@1.service"
    good = render_unit(name, LAUNCHER, FACTS, IMAGE)
    failing = render_unit(name, LAUNCHER, FACTS, CannotRun("image missing"))
    desired = {name: DesiredUnit(name, LAUNCHER.hash, good, DesiredState.LAUNCHED)}

    class St:
        def __init__(self, active):
            self.load_state, self.active_state, self.sub_state = "loaded", active, "x"

    # same rendering on disk and running (e.g. after a fleetd restart): adopted, no task
    observed = observe({name: good}, {name: St("active")}, desired_aware_hash(desired))
    assert observed[name].hash == LAUNCHER.hash
    assert not plan(desired, observed, {})
    # rendered as failing earlier, the image has arrived since: written again and started
    observed = observe({name: failing}, {name: St("failed")}, desired_aware_hash(desired))
    assert observed[name].hash is None
    kinds = [t.kind for t in plan(desired, observed, {name: LAUNCHER.hash}).tasks]
    assert kinds == [TaskKind.UNLOAD, TaskKind.LOAD, TaskKind.START]
    # another stored unit on disk: replaced as before
    other = unit("Image=busybox\nCommand=sh\n")
    observed = observe({name: render_unit(name, other, FACTS, IMAGE)}, {name: St("active")},
                       desired_aware_hash(desired))
    assert observed[name].hash == other.hash
