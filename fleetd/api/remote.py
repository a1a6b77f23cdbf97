"""Beyond fleet: `systemctl status` and `journalctl` of a unit, answered by the machine running it.

    GET /fleet/v1/units/<name>/status[?machineID=M]
        text/plain output of `systemctl status -l --no-pager <name>` run on the unit's machine;
        headers X-Fleet-Machine-ID and X-Fleet-Exit-Status (systemctl's exit status).
    GET /fleet/v1/units/<name>/journal[?lines=10&output=short&follow=false&machineID=M]
        text/plain stream of `journalctl --unit <name> --no-pager -n N --output O [-f]`.

The machine is the unit's target machine (or `machineID`, required for a global unit). If that
is this fleetd, the command runs here; otherwise this fleetd relays the request to the target's
fleetd over TCP: `https://<publicIP>:<port>` when this fleetd has TLS client certificates
(api_cafile/certfile/keyfile), else `http://` (api_insecure_tcp labs), with <port> the port of
this fleetd's own `api_tcp` (the cluster is expected to use one port). A relayed request carries
X-Fleet-Relayed-By and is never relayed again. Output is streamed in both cases, so `follow`
works through a relay until the client disconnects (which kills journalctl).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import aiohttp
from aiohttp import web

from fleetd.api.context import ApiContext, HttpError, ctx_of
from fleetd.api.listeners import parse_hostport
from fleetd.wire import client_ssl_context
from fleetd.errors import UnitError
from fleetd.jobstate import current_state_of
from fleetd.unit.name import parse_unit_name

log = logging.getLogger(__name__)

RELAY_HEADER = "X-Fleet-Relayed-By"
JOURNAL_OUTPUTS = frozenset({
    "short", "short-full", "short-iso", "short-iso-precise", "short-precise", "short-monotonic",
    "short-unix", "verbose", "export", "json", "json-pretty", "json-sse", "json-seq", "cat", "with-unit",
})
MAX_LINES = 1_000_000
STATUS_TIMEOUT = 30.0


def status_command(name: str, user: bool) -> list[str]:
    return ["systemctl", *(["--user"] if user else []), "status", "-l", "--no-pager", name]


def journal_command(name: str, lines: int, output: str, follow: bool, user: bool) -> list[str]:
    cmd = ["journalctl", *(["--user-unit", name] if user else ["--unit", name]),
           "--no-pager", "-n", str(lines), "--output", output]
    return cmd + (["-f"] if follow else [])


def _int_param(request: web.Request, key: str, default: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(400, f"{key}={raw!r} is not an integer") from None
    if not 0 <= value <= MAX_LINES:
        raise HttpError(400, f"{key}={value} out of range (0..{MAX_LINES})")
    return value


def _bool_param(request: web.Request, key: str) -> bool:
    raw = request.query.get(key, "false").lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off", ""):
        return False
    raise HttpError(400, f"{key}={raw!r} is not a boolean")


async def _target_machine(request: web.Request, name: str) -> str:
    """The machine whose systemd has the unit: ?machineID=, else the unit's target machine."""
    try:
        parse_unit_name(name)
    except UnitError as exc:
        raise HttpError(400, str(exc)) from None
    record = (await ctx_of(request).registry.unit_records([name])).get(name)
    if record is None:
        raise HttpError(404, "unit does not exist")
    unit, states = record.unit, record.states
    wanted = request.query.get("machineID", "")
    if unit.is_global:
        if not wanted:
            raise HttpError(400, f"unit {name} is global: give machineID=<machine> to choose one of its machines")
        return wanted
    current, machine = current_state_of(unit, record.placement, states)
    if wanted and wanted != machine:
        if not any(s.machine_id == wanted for s in states):
            raise HttpError(409, f"unit {name} is not on machine {wanted}")
        return wanted
    if not machine:
        raise HttpError(409, f"Unit {name} does not appear to be loaded.")
    return machine


async def _stream_process(request: web.Request, cmd: list[str], machine_id: str) -> web.StreamResponse:
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )
    except OSError as exc:
        raise HttpError(500, f"cannot run {cmd[0]} on machine {machine_id}: {exc.strerror}") from None
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8",
                                           "X-Fleet-Machine-ID": machine_id})
    try:
        await response.prepare(request)
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            await response.write(chunk)
        await proc.wait()
        await response.write_eof()
        return response
    finally:
        if proc.returncode is None:  # client went away (e.g. journal -f interrupted)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def _run_status(request: web.Request, cmd: list[str], machine_id: str) -> web.Response:
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        raise HttpError(500, f"cannot run {cmd[0]} on machine {machine_id}: {exc.strerror}") from None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), STATUS_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise HttpError(504, f"{' '.join(cmd)} did not finish in {STATUS_TIMEOUT:.0f}s on machine {machine_id}") from None
    return web.Response(body=out, headers={"Content-Type": "text/plain; charset=utf-8",
                                           "X-Fleet-Machine-ID": machine_id,
                                           "X-Fleet-Exit-Status": str(proc.returncode)})


# ---------------------------------------------------------------------------- relay


def remote_base_url(ctx: ApiContext, public_ip: str) -> tuple[str, ssl.SSLContext | None]:
    cfg = ctx.config
    if not cfg.api_tcp:
        raise HttpError(502, "this fleetd has no api_tcp configured, so it cannot reach the fleet API of other machines")
    _, port = parse_hostport(cfg.api_tcp)
    host = f"[{public_ip}]" if ":" in public_ip else public_ip
    if cfg.api_cafile and cfg.api_certfile and cfg.api_keyfile:
        return f"https://{host}:{port}", client_ssl_context(cfg.api_cafile, cfg.api_certfile, cfg.api_keyfile)
    return f"http://{host}:{port}", None


async def _relay(request: web.Request, machine_id: str) -> web.StreamResponse:
    ctx = ctx_of(request)
    if request.headers.get(RELAY_HEADER):
        raise HttpError(502, f"request relayed by {request.headers[RELAY_HEADER]} reached machine "
                             f"{ctx.machine_id or '?'}, not {machine_id}; not relaying it again")
    machine = await ctx.registry.get_machine(machine_id)
    if machine is None:
        raise HttpError(502, f"machine {machine_id} is not registered (down?)")
    if not machine.public_ip:
        raise HttpError(502, f"machine {machine_id} has no public IP to reach its fleet API")
    base, ssl_ctx = remote_base_url(ctx, machine.public_ip)
    query = dict(request.query)
    query["machineID"] = machine_id
    url = f"{base}{request.path}"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=None)
    session = aiohttp.ClientSession(timeout=timeout)
    try:
        try:
            upstream = await session.get(url, params=query, ssl=ssl_ctx if ssl_ctx is not None else False,
                                         headers={RELAY_HEADER: ctx.machine_id or "unknown"})
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise HttpError(502, f"cannot reach the fleet API of machine {machine_id[:8]} at {base}: "
                                 f"{exc or type(exc).__name__}") from None
        async with upstream:
            headers = {k: v for k, v in upstream.headers.items()
                       if k.lower() in ("content-type", "x-fleet-machine-id", "x-fleet-exit-status")}
            response = web.StreamResponse(status=upstream.status, headers=headers)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
    finally:
        await session.close()


# ---------------------------------------------------------------------------- handlers


async def unit_status(request: web.Request) -> web.StreamResponse:
    if request.method != "GET":
        raise HttpError(405, "only GET supported against this resource")
    name = request.match_info["name"]
    machine_id = await _target_machine(request, name)
    ctx = ctx_of(request)
    if machine_id != ctx.machine_id:
        return await _relay(request, machine_id)
    return await _run_status(request, status_command(name, ctx.config.systemd_user), machine_id)


async def unit_journal(request: web.Request) -> web.StreamResponse:
    if request.method != "GET":
        raise HttpError(405, "only GET supported against this resource")
    name = request.match_info["name"]
    lines = _int_param(request, "lines", 10)
    output = request.query.get("output", "short")
    if output not in JOURNAL_OUTPUTS:
        raise HttpError(400, f"output={output!r} is not a journalctl output mode ({', '.join(sorted(JOURNAL_OUTPUTS))})")
    follow = _bool_param(request, "follow")
    machine_id = await _target_machine(request, name)
    ctx = ctx_of(request)
    if machine_id != ctx.machine_id:
        return await _relay(request, machine_id)
    cmd = journal_command(name, lines, output, follow, ctx.config.systemd_user)
    return await _stream_process(request, cmd, machine_id)

