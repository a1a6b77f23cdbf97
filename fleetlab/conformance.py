"""Differential runs: one scripted fleetctl scenario, run against different fleets, compared.

The scenario (`SCENARIO`, unit files in `UNIT_FILES`) is a table of fleetctl invocations run
in node 1 of a lab, from a directory that holds the unit files, against the fleetd API on the
node's unix socket. `run_scenario` runs it with a given fleetctl and returns one `Outcome`
(stdout, stderr, exit code) per step, normalized (`normalize`) so that what must differ between
two labs does not count: machine IDs, IP addresses, column padding (it follows the width of the
IPs). `differences` compares two runs step by step.

Used by tests/test_conformance_diff_lab.py: the original fleet v1.0.0 (fleetlab/peer.py)
with its own fleetctl is the reference; our fleetd with our fleetctl, and our fleetd with the
original fleetctl, are compared with it. Every difference that remains is listed, with its
reason, in the table of docs/fleetctl.md ("Differences from fleet v1.0.0"), which
`documented_differences` parses.
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

WORKDIR = "/root/hf-scenario"

# a line of 2,049 bytes (fleet's unit file parser refuses lines longer than 2,048)
LONG_LINE = "Description=" + "x" * (2049 - len("Description="))

UNIT_FILES: dict[str, str] = {
    "hello.service": "[Unit]\nDescription=hello\n\n[Service]\nExecStart=/bin/sleep infinity\n",
    "hello2.service": "[Unit]\nDescription=hello again\n\n[Service]\nExecStart=/bin/sleep 100000\n",
    # a template with comments and a continuation line
    "tmpl@.service": (
        "# a template, with comments\n"
        "[Unit]\n"
        "Description=template %i\n"
        "\n"
        "[Service]\n"
        "; the payload\n"
        "ExecStart=/bin/sh -c \\\n"
        "  'sleep 100000'\n"
    ),
    # a plain unit with comments and a continuation line
    "commented.service": (
        "# a comment\n"
        "[Unit]\n"
        "Description=commented ; not a comment\n"
        "\n"
        "[Service]\n"
        "; another comment\n"
        "ExecStart=/bin/sh -c \\\n"
        "  'sleep 100000'\n"
    ),
    "glob.service": (
        "[Unit]\nDescription=global\n\n[Service]\nExecStart=/bin/sleep infinity\n\n"
        "[X-Fleet]\nGlobal=true\n"
    ),
    "bad name.service": "[Unit]\nDescription=a space in the name\n\n[Service]\nExecStart=/bin/true\n",
    "long.service": f"[Unit]\n{LONG_LINE}\n\n[Service]\nExecStart=/bin/true\n",
    "forbidden.service": (
        "[Unit]\nDescription=global and MachineOf\n\n[Service]\nExecStart=/bin/true\n\n"
        "[X-Fleet]\nGlobal=true\nMachineOf=hello.service\n"
    ),
}


@dataclass(frozen=True)
class Step:
    id: str
    args: tuple[str, ...]
    # re-run (up to `settle` s) until the normalized stdout matches this regular expression
    # (whole text): for views of states that agents publish asynchronously (global units,
    # --no-block, fleet's agents dropping the state of an unloaded unit)
    until: str | None = None
    settle: float = 30.0
    # sort the lines after the header: rows ordered by machine ID (random per lab)
    sort_rows: bool = False
    # replace a unit file before the step (name, text)
    write: tuple[str, str] | None = None


def _s(id: str, *args: str, **kw) -> Step:
    return Step(id, tuple(args), **kw)


SCENARIO: list[Step] = [
    _s("version", "version"),
    _s("machines", "list-machines", until=r"MACHINE\tIP\tMETADATA\n(.*\n){3}", sort_rows=True),
    _s("machines-full", "list-machines", "--full", "--no-legend", "--fields=machine,ip,metadata",
       until=r"(.*\n){3}", sort_rows=True),
    _s("files-empty", "list-unit-files"),
    _s("units-empty", "list-units"),
    _s("submit", "submit", "hello.service"),
    _s("submit-again", "submit", "hello.service"),
    _s("files-submitted", "list-unit-files"),
    _s("load", "load", "hello.service"),
    _s("files-loaded", "list-unit-files", "--fields=unit,dstate,state"),
    _s("start", "start", "hello.service"),
    _s("units", "list-units"),
    _s("units-full", "list-units", "--full", "--no-legend"),
    _s("cat", "cat", "hello.service"),
    _s("submit-commented", "submit", "commented.service"),
    _s("cat-commented", "cat", "commented.service"),
    _s("submit-template", "submit", "tmpl@.service"),
    _s("cat-template", "cat", "tmpl@.service"),
    _s("start-instances", "start", "tmpl@1.service", "tmpl@2.service"),
    _s("cat-instance", "cat", "tmpl@1.service"),
    _s("units-instances", "list-units", "--no-legend", "--fields=unit,active,sub"),
    _s("files-instances", "list-unit-files", "--no-legend", "--fields=unit,desc,dstate,state"),
    # --block-attempts: fleet v1.0.0's restart can wait forever against a fast fleetd (see docs)
    _s("restart", "restart", "--block-attempts=20", "tmpl@1.service"),
    # a no-op where restart worked; where fleet's fleetctl timed out (against our fleetd) it
    # starts the unit again, so that the steps after do not inherit that difference
    _s("restart-repair", "start", "tmpl@1.service"),
    _s("stop", "stop", "hello.service"),
    _s("files-stopped", "list-unit-files", "--no-legend", "--fields=unit,dstate,state"),
    _s("stop-again", "stop", "hello.service"),
    _s("unload", "unload", "hello.service"),
    _s("files-unloaded", "list-unit-files", "--no-legend", "--fields=unit,dstate,state"),
    _s("start-no-block", "start", "--no-block", "hello2.service"),
    _s("units-no-block", "list-units", "--no-legend", "--fields=unit,active",
       until=r"hello2.service\tactive\ntmpl@1.service\tactive\ntmpl@2.service\tactive\n"),
    _s("start-global", "start", "glob.service"),
    _s("units-global", "list-units", "--no-legend", "--fields=unit,active,sub",
       until=r"(glob.service\tactive\trunning\n){3}(.*\n){3}"),
    _s("files-global", "list-unit-files", "--no-legend", "--fields=unit,global,dstate,state"),
    _s("replace", "start", "--replace", "hello2.service",
       write=("hello2.service", UNIT_FILES["hello2.service"].replace("hello again", "hello replaced"))),
    _s("files-replaced", "list-unit-files", "--no-legend", "--fields=unit,desc,dstate"),
    _s("submit-differs", "submit", "hello2.service",
       write=("hello2.service", UNIT_FILES["hello2.service"].replace("hello again", "hello changed"))),
    # bad input
    _s("bad-name", "submit", "bad name.service"),
    _s("long-line", "submit", "long.service"),
    _s("forbidden", "submit", "forbidden.service"),
    _s("start-unknown", "start", "nope.service"),
    _s("cat-unknown", "cat", "nope.service"),
    _s("stop-unknown", "stop", "nope.service"),
    _s("unload-unknown", "unload", "nope.service"),
    _s("destroy-unknown", "destroy", "nope.service"),
    _s("start-template", "start", "tmpl@.service"),
    _s("load-template", "load", "tmpl@.service"),
    _s("bad-field", "list-units", "--fields=unit,bogus"),
    _s("empty-fields", "list-unit-files", "--fields="),
    _s("no-units", "start"),
    _s("unknown-command", "frobnicate"),
    # clean up
    _s("destroy", "destroy", "hello.service", "hello2.service", "glob.service", "commented.service",
       "tmpl@1.service", "tmpl@2.service", "tmpl@.service"),
    _s("files-end", "list-unit-files"),
]


@dataclass(frozen=True)
class Outcome:
    stdout: str
    stderr: str
    exit: int


_MACHINE_FULL = re.compile(r"\b[0-9a-f]{32}\b")
_MACHINE_SHORT = re.compile(r"\b[0-9a-f]{8}\.\.\.")
_IP = re.compile(r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b")
_TABS = re.compile(r"\t+")
_LOG_TIME = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ", re.MULTILINE)
_HOSTNAME = re.compile(r"hostname=[^\s,]*-n(\d+)")
# fleetctl v1.0.0 fills its machine cache in one goroutine while others read it (a data race):
# the legend of `Unit X launched on M/IP` is sometimes missing when it waits for several units
_UNIT_ON = re.compile(r"^(Unit \S+ \S+) on <machine>\.\.\./<ip>$", re.MULTILINE)


def normalize(text: str, sort_rows: bool = False) -> str:
    """What must differ between two labs: machine IDs, IPs, lab names in the hostnames, the
    time stamps of log lines, and the tab padding that follows the width of the IPs (fleet's
    tables are tab-aligned); with `sort_rows`, the order of the rows (by random machine ID)."""
    text = _MACHINE_FULL.sub("<machine-id>", text)
    text = _MACHINE_SHORT.sub("<machine>...", text)
    text = _IP.sub("<ip>", text)
    text = _LOG_TIME.sub("<time> ", text)
    text = _HOSTNAME.sub(r"hostname=<lab>-n\1", text)
    text = _UNIT_ON.sub(r"\1", text)
    text = _TABS.sub("\t", text)
    text = _sort_unit_reports(text)
    if sort_rows and text:
        lines = text.splitlines(keepends=True)
        head = [lines.pop(0)] if lines[0].split("\t", 1)[0].isupper() else []  # the legend
        text = "".join(head + sorted(lines))
    return text


def _sort_unit_reports(text: str) -> str:
    """fleetctl v1.0.0 waits for each unit in its own goroutine: consecutive `Unit X <state>`
    lines with the same state come in any order. Sort each such run."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    run: list[str] = []
    key = None
    for line in lines + [""]:
        parts = line.split()
        k = parts[2] if len(parts) >= 3 and parts[0] == "Unit" else None
        if run and (k is None or k != key):
            out.extend(sorted(run))
            run = []
        if k is not None and line:
            run.append(line)
            key = k
        elif line:
            out.append(line)
            key = None
    return "".join(out)


Exec = Callable[[str, float], "object"]  # (shell command, timeout) -> CompletedProcess


def prepare(write_file: Callable[[str, str], None]) -> None:
    """Write the scenario's unit files (name, text) into WORKDIR of node 1."""
    for name, text in UNIT_FILES.items():
        write_file(name, text)


def run_scenario(exec_in_node: Exec, fleetctl: str, write_file: Callable[[str, str], None],
                 steps: list[Step] = SCENARIO, timings: dict[str, float] | None = None) -> dict[str, Outcome]:
    """Run the steps with `fleetctl` (a command line, as a shell string) in WORKDIR; the
    seconds each step took go to `timings` if given."""
    prepare(write_file)
    out: dict[str, Outcome] = {}
    for step in steps:
        started = time.monotonic()
        if step.write is not None:
            write_file(*step.write)
        cmd = f"cd {shlex.quote(WORKDIR)} && {fleetctl} {shlex.join(step.args)}"
        deadline = time.monotonic() + step.settle
        while True:
            proc = exec_in_node(cmd, 120.0)
            outcome = Outcome(normalize(proc.stdout, step.sort_rows), normalize(proc.stderr),
                              proc.returncode)
            if (step.until is None or re.fullmatch(step.until, outcome.stdout)
                    or time.monotonic() > deadline):
                break
            time.sleep(0.3)
        out[step.id] = outcome
        if timings is not None:
            timings[step.id] = round(time.monotonic() - started, 2)
    return out


# fleet v1.0.0's fleetctl gives up on its own short waits ("Failed to find an active unit
# hello.service within 2s"): on a loaded machine its agent may not have started the unit yet.
# That is the reference's timing, not its behaviour; such a reference run is repeated.
_REFERENCE_TIMEOUT = re.compile(r"Failed to (find an active unit \S+|fetch states) within \d+s")


def timed_out_steps(outcomes: dict[str, Outcome]) -> list[str]:
    """The steps of a run where fleetctl gave up one of its own waits (see _REFERENCE_TIMEOUT)."""
    return [step for step, o in outcomes.items() if _REFERENCE_TIMEOUT.search(o.stderr)]


@dataclass(frozen=True)
class Difference:
    step: str
    stream: str  # stdout, stderr, exit
    reference: str
    other: str


def differences(reference: dict[str, Outcome], other: dict[str, Outcome]) -> list[Difference]:
    diffs = []
    for step, ref in reference.items():
        got = other.get(step)
        if got is None:
            diffs.append(Difference(step, "missing", repr(ref), ""))
            continue
        for stream in ("stdout", "stderr", "exit"):
            a, b = getattr(ref, stream), getattr(got, stream)
            if a != b:
                diffs.append(Difference(step, stream, str(a), str(b)))
    return diffs


@dataclass(frozen=True)
class Documented:
    run: str
    step: str
    streams: frozenset[str]
    reason: str = field(compare=False)


_ROW = re.compile(r"^\|\s*`?(?P<run>[a-z-]+)`?\s*\|\s*`(?P<step>[a-z0-9-]+)`\s*\|\s*(?P<streams>[a-z, ]+?)\s*\|(?P<reason>.*)\|\s*$")
TABLE_HEADING = "## Differences from fleet v1.0.0"


def documented_differences(doc: Path) -> list[Documented]:
    """The rows of the table under TABLE_HEADING in docs/fleetctl.md:
    `| run | step | streams | reason |`, run being `ours` (our fleetctl, our fleetd) or
    `peer-ctl` (fleet's fleetctl, our fleetd), streams a comma-separated subset of
    stdout, stderr, exit."""
    text = Path(doc).read_text()
    if TABLE_HEADING not in text:
        return []
    section = text.split(TABLE_HEADING, 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        m = _ROW.match(line)
        if m:
            streams = frozenset(s.strip() for s in m["streams"].split(",") if s.strip())
            rows.append(Documented(m["run"], m["step"], streams, m["reason"].strip()))
    return rows


def undocumented(run: str, diffs: list[Difference], table: list[Documented]) -> list[Difference]:
    allowed = {(d.step, s) for d in table if d.run == run for s in d.streams}
    return [d for d in diffs if (d.step, d.stream) not in allowed]


def render(diffs: list[Difference]) -> str:
    out = []
    for d in diffs:
        out.append(f"--- step {d.step} ({d.stream})\n  fleet v1.0.0: {d.reference!r}\n  this run:     {d.other!r}")
    return "\n".join(out)
