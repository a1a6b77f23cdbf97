"""fleet-confd: render jinja2 templates from the service endpoints in etcd, in the confd tradition.

    fleet-confd --template /etc/fleet/nginx-web.conf.j2:/etc/nginx/conf.d/web.conf \\
                --check-cmd 'nginx -t -c /etc/nginx/nginx.conf' --reload-cmd 'nginx -s reload'

It follows the endpoint records with one etcd watch. After every change (bursts within
`--settle` are taken together) it renders each template; a template whose text differs from
its destination file is written to a temporary file next to it, the check command runs (with
`{src}` replaced by the temporary file's path, `{dest}` by the destination), and only if it
exits 0 is the file moved over the destination (atomically, rename). When at least one file
was replaced, the reload command runs once. A failed check leaves the old file in place and
says why (one line on stderr, with the command's last line of output).

Templates see:
    services        {name: [endpoint, ...]}  healthy endpoints of every service, sorted
    endpoints       every endpoint (healthy or not)
    service(name)   the healthy endpoints of one service ([] when it has none)
where an endpoint has .service .unit .machine_id .host .port .protocol .tags .health .label.

Settings for etcd come from fleet.conf (--config, default /etc/fleet/fleet.conf) and FLEET_*
variables, so that it runs as a fleet global unit with no other options. Exit status: 0 (with
--once: everything rendered), 1 a check failed (with --once) or a bad template/option, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fleetd.discovery.view import ServiceView
from fleetd.errors import FleetError

log = logging.getLogger("fleet-confd")


@dataclass(frozen=True)
class Template:
    source: Path
    dest: Path


@dataclass
class Outcome:
    written: list[Path]
    failed: list[str]  # one line per template whose check failed or could not be written


def parse_template_arg(text: str) -> Template:
    src, sep, dest = text.rpartition(":")
    if not sep or not src or not dest:
        raise argparse.ArgumentTypeError(f"--template {text!r}: expected SOURCE:DEST")
    return Template(Path(src), Path(dest))


def render_text(template_text: str, view: ServiceView, *, name: str = "<template>") -> str:
    """The template rendered for a view (pure)."""
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    healthy = {}
    for ep in view.endpoints:
        if ep.healthy:
            healthy.setdefault(ep.service, []).append(ep)
    try:
        return env.from_string(template_text).render(
            services=healthy, endpoints=list(view.endpoints), service=lambda n: list(healthy.get(n, ())))
    except jinja2.TemplateError as exc:
        raise FleetError(f"template {name}: {exc}") from None


def _line(text: str, last: bool = False) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if last else lines[0]).strip() if lines else ""


def run_command(command: str, **values: str) -> tuple[bool, str]:
    argv = [part.format(**values) for part in shlex.split(command)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    out = _line(proc.stderr) or _line(proc.stdout, last=True)  # the first complaint: usually the cause
    return proc.returncode == 0, f"exit status {proc.returncode}" + (f": {out}" if out else "")


def apply(templates: list[Template], view: ServiceView, check_cmd: str = "", reload_cmd: str = "") -> Outcome:
    """Render every template; replace changed files whose check passes; reload once if any was."""
    outcome = Outcome([], [])
    for tpl in templates:
        try:
            text = render_text(tpl.source.read_text(), view, name=str(tpl.source))
        except OSError as exc:
            outcome.failed.append(f"{tpl.source}: cannot read: {exc.strerror}")
            continue
        except FleetError as exc:
            outcome.failed.append(str(exc))
            continue
        try:
            if tpl.dest.read_text() == text:
                continue
        except OSError:
            pass
        fd, staged = tempfile.mkstemp(prefix=f".{tpl.dest.name}.", dir=tpl.dest.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(staged, 0o644)
            if check_cmd:
                ok, why = run_command(check_cmd, src=staged, dest=str(tpl.dest))
                if not ok:
                    outcome.failed.append(f"{tpl.dest}: check command failed ({why}); the old file stays")
                    continue
            os.replace(staged, tpl.dest)
            staged = ""
            outcome.written.append(tpl.dest)
        finally:
            if staged:
                os.unlink(staged)
    for line in outcome.failed:
        log.error("%s", line)
    for dest in outcome.written:
        log.info("wrote %s", dest)
    if outcome.written and reload_cmd:
        ok, why = run_command(reload_cmd)
        if ok:
            log.info("reload: %s", reload_cmd)
        else:
            log.error("reload command failed (%s)", why)
            outcome.failed.append(f"reload command failed ({why})")
    return outcome


async def follow(records, templates: list[Template], check_cmd: str, reload_cmd: str, *, once: bool = False,
                 settle: float = 0.1) -> int:
    from fleetd.errors import RegistryError

    latest: dict = {}
    changed = asyncio.Event()

    async def watch() -> None:
        delay = 0.5
        while True:
            try:
                async for current in records.changes():
                    latest["records"] = current  # built into a view by the renderer below
                    changed.set()
                    delay = 0.5
            except RegistryError as exc:
                log.warning("%s; retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, 10.0)

    watcher = asyncio.create_task(watch())
    try:
        while True:
            await asyncio.wait([asyncio.ensure_future(changed.wait()), watcher], return_when=asyncio.FIRST_COMPLETED)
            if watcher.done():
                return 1
            await asyncio.sleep(settle)  # a burst of changes renders once
            changed.clear()
            view = ServiceView.build(list(latest["records"].values()))
            outcome = await asyncio.to_thread(apply, templates, view, check_cmd, reload_cmd)
            if once:
                return 1 if outcome.failed else 0
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet-confd", description="Render jinja2 templates from fleet's service endpoints (watching etcd); "
                                        "check, replace atomically and reload only when the text changes.",
        epilog="Exit status: 0 ok, 1 a check failed (--once) or an error, 2 bad usage.")
    parser.add_argument("--template", "-t", action="append", type=parse_template_arg, required=True,
                        metavar="SOURCE:DEST", help="A template and the file it renders to. Repeatable.")
    parser.add_argument("--check-cmd", default="", help="Run on the new file before it replaces DEST; "
                                                        "{src} and {dest} are replaced. Non-zero: keep the old file.")
    parser.add_argument("--reload-cmd", default="", help="Run once after files were replaced.")
    parser.add_argument("--once", action="store_true", help="Render once and exit.")
    parser.add_argument("--config", default="/etc/fleet/fleet.conf", help="fleet.conf for the etcd settings.")
    parser.add_argument("--etcd-servers", default=None, help="etcd endpoints (overrides fleet.conf).")
    parser.add_argument("--etcd-key-prefix", default=None, help="fleet's key prefix (overrides fleet.conf).")
    parser.add_argument("--settle", type=float, default=0.1, help="Seconds to gather a burst of changes.")
    return parser


async def _main(args: argparse.Namespace) -> int:
    from fleetd.config import load_config
    from fleetd.registry import Registry
    from fleetd.registry.services import ServiceRecords

    overrides = {k: v for k, v in (("etcd_servers", args.etcd_servers), ("etcd_key_prefix", args.etcd_key_prefix))
                 if v is not None}
    config = load_config(Path(args.config), overrides=overrides)
    for tpl in args.template:
        if not tpl.source.is_file():
            raise FleetError(f"template {tpl.source}: no such file")
        if not tpl.dest.parent.is_dir():
            raise FleetError(f"{tpl.dest}: directory {tpl.dest.parent} does not exist")
    registry = await Registry.connect(config.etcd)
    try:
        records = ServiceRecords(registry, domain=config.dns_domain, skydns_prefix="")
        return await follow(records, args.template, args.check_cmd, args.reload_cmd, once=args.once,
                            settle=args.settle)
    finally:
        await registry.close()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="fleet-confd: %(message)s")
    logging.getLogger("aetcd").setLevel(logging.WARNING)
    try:
        code = asyncio.run(_main(args))
    except FleetError as exc:
        print(f"fleet-confd: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
