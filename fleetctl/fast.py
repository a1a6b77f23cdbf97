"""fleetctl's entry point, with a fast path for the read-only listing commands (issue 14).

`fleetctl list-units` and `fleetctl list-machines` with the API driver over a unix socket or
plain http:// are what scripts and people run most. Through the full CLI (click, the client
interface, fleetd.model and fleetd.wire, http.client with email and ssl) a process spent
0.2-0.5 s, nearly all of it importing; the API's answer itself takes milliseconds. So `main()`
first looks whether the command line is one of these in its plain form, and answers it with the
standard library's C sockets and JSON only (fleetctl/lean.py: no re, json, socket or urllib.parse,
~10-25 ms of imports; bin/fleetctl is the launcher, without the console script's `import re`) (this module imports nothing else at start). Any other
command line, and anything unexpected on the way (an option it does not know, TLS, a --tunnel,
an answer that is not a plain 200 JSON page), goes to the full CLI (`fleetctl.cli.main`), which
then does the whole command itself: the fast path never prints a partial answer.

Its output is the full CLI's (the same `fleetctl.output` functions make the table);
tests/etcd/test_fleetctl_fast.py runs both against a real fleetd API and compares, and pins
the set of modules the fast path imports. `submit`, `load`, `start`, `stop` and `destroy` of
plain units have their own fast path (fleetctl/fast_units.py, the same rules), with the etcd
driver too (fleetctl/fast_etcd.py, over fleetd/registry/gateway.py); the HTTP both use is
fleetctl/fast_http.py.
"""

from __future__ import annotations

import os
import sys

from fleetctl.fast_http import API_PREFIX, NotFast, Unreachable, connect, global_options, locate, read_response, request_bytes

# command -> (resource, key of the page's items, default --fields)
COMMANDS = {
    "list-units": ("state", "states", "unit,machine,active,sub"),
    "list-machines": ("machines", "machines", "machine,ip,metadata"),
}
# commands of fleetctl/fast_units.py (start, stop, destroy ... of plain units)
UNIT_COMMANDS = frozenset({"submit", "load", "start", "stop", "destroy"})
def plan(argv: list[str], environ) -> dict | None:
    """The fast path's reading of a listing command line, or None when it is the full CLI's."""
    found = global_options(argv, environ)
    if found is None:
        return None
    opts, args = found
    if not args or args[0] not in COMMANDS:
        return None
    opts["command"] = args.pop(0)
    while args:
        flag, eq, value = args.pop(0).partition("=")
        if flag in ("--full", "-l", "--no-legend") and not eq:
            opts["full" if flag != "--no-legend" else "no_legend"] = True
        elif flag in ("--fields", "--output"):
            if not eq:
                if not args:
                    return None
                value = args.pop(0)
            opts[flag[2:]] = value
        else:  # --help, arguments, anything else
            return None
    if opts["output"] not in ("table", "json"):
        return None
    return locate(opts)


def _get(opts: dict, path: str) -> dict:
    """GET one API page: HTTP/1.0, the connection closed by the server after its answer."""
    try:
        with connect(opts, opts["timeout"]) as sock:
            sock.sendall(request_bytes(opts, "GET", path))
            status, headers, body = read_response(sock)
    except TimeoutError:  # socket.timeout
        raise Unreachable(f"no answer within {opts['timeout']:g}s") from None
    except OSError as exc:
        if exc.strerror:
            raise Unreachable(exc.strerror) from None
        raise NotFast() from None
    if status != 200 or "json" not in headers.get("content-type", ""):
        raise NotFast()
    from fleetctl.lean import loads

    page = loads(body)
    if not isinstance(page, dict):
        raise NotFast()
    return page


def _items(opts: dict, resource: str, key: str) -> list[dict]:
    items: list[dict] = []
    token = ""
    while True:
        query = ""
        if token:
            from fleetctl.lean import quote

            query = "?nextPageToken=" + quote(token, safe="")
        page = _get(opts, f"{API_PREFIX}/{resource}{query}")
        items.extend(page.get(key) or [])
        token = page.get("nextPageToken") or ""
        if not token:
            return items


class _Obj:
    """Attribute access to what fleetctl.output's field functions read."""

    def __init__(self, **attrs):
        self.__dict__.update(attrs)


def _machine(m: dict) -> _Obj:
    return _Obj(id=m.get("id", ""), public_ip=m.get("primaryIP", ""), metadata=dict(m.get("metadata") or {}),
                version=m.get("version", ""), draining=bool(m.get("draining", False)),
                capacity=_Obj(cpu=float(m.get("cpus") or 0), memory=int(m.get("memory") or 0)))


def _state(s: dict) -> _Obj:
    return _Obj(name=s.get("name", ""), machine_id=s.get("machineID", ""), hash=s.get("hash", ""),
                load_state=s.get("systemdLoadState", ""), active_state=s.get("systemdActiveState", ""),
                sub_state=s.get("systemdSubState", ""))


def answer(opts: dict) -> str:
    """The command's whole output (raises NotFast or Unreachable)."""
    from fleetctl import output

    command = opts["command"]
    resource, key, default_fields = COMMANDS[command]
    valid = output.UNIT_FIELDS if command == "list-units" else output.MACHINE_FIELDS
    try:
        cols = output.parse_fields(opts["fields"] or default_fields, valid)
    except ValueError:
        raise NotFast() from None  # the full CLI says what is wrong
    if command == "list-units":
        states = [_state(s) for s in _items(opts, resource, key)]
        if opts["output"] == "json":
            import json

            return json.dumps([
                {"name": s.name, "machineID": s.machine_id, "hash": s.hash, "systemdLoadState": s.load_state,
                 "systemdActiveState": s.active_state, "systemdSubState": s.sub_state} for s in states], indent=2) + "\n"
        machines = {m.id: m for m in map(_machine, _items(opts, "machines", "machines"))}
        rows = [[output.UNIT_FIELDS[c](s, opts["full"], machines) for c in cols] for s in states]
    else:
        found = [_machine(m) for m in _items(opts, resource, key)]
        if opts["output"] == "json":
            import json

            return json.dumps([
                {"id": m.id, "primaryIP": m.public_ip, "metadata": dict(m.metadata), "cpus": m.capacity.cpu,
                 "memory": m.capacity.memory, "draining": m.draining, "version": m.version} for m in found],
                indent=2) + "\n"
        rows = [[output.MACHINE_FIELDS[c](m, opts["full"]) for c in cols] for m in found]
    header = [[c.upper() for c in cols]] if not opts["no_legend"] else []
    return output.tabwrite(header + rows)


def _leave(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a broken pipe
            pass
    os._exit(code)


def main() -> None:
    """fleetctl: the fast path when it applies, else the full CLI."""
    argv = sys.argv[1:]
    opts = plan(argv, os.environ)
    if opts is None and UNIT_COMMANDS.intersection(argv):
        from fleetctl.fast_units import run_unit_command

        code = run_unit_command(argv, os.environ)
        if code is None:  # the etcd driver's (fleetctl/fast_etcd.py)
            from fleetctl.fast_etcd import run_etcd_command

            code = run_etcd_command(argv, os.environ)
        if code is not None:
            _leave(code)
    if opts is not None:
        try:
            text = answer(opts)
        except Unreachable as exc:
            print(f"Error: fleet API unreachable at {opts['display']}: {exc}", file=sys.stderr)
            _leave(1)
        except NotFast:
            pass
        else:
            try:
                sys.stdout.write(text)
            except BrokenPipeError:
                pass
            _leave(0)
    from fleetctl.cli import main as full_cli

    full_cli()


if __name__ == "__main__":
    main()
