"""fleetctl's fast path for `submit`, `load`, `start`, `stop` and `destroy` of plain units (issue 14).

A `fleetctl start` through the full CLI spends 0.2-0.3 s of CPU importing (click, fleetd.model,
fleetd.unit, http.client...) for ~0.09 s of cluster time. This module does the same command with
the standard library alone (its C sockets and JSON through fleetctl/lean.py; hashlib), for the cases it knows
exactly:

* API driver over a unix socket or plain http:// (fleetctl.fast.global_options/locate);
* flags `--no-block` and `--block-attempts N` (no --replace, --sign, --help, `--`);
* every argument a plain unit (no template or instance, valid name, no duplicate) that is either
  a local unit file the quick parser reads (`quick_options`: the full parser's result, or None
  for anything it is not sure of) without [X-Fleet], [X-Container] or [X-Service] sections
  (so the unit is not global and has no requirements to check), or a unit already in the
  registry (with the same body, if a local file exists too).

Anything else, and any surprise while reading the registry, returns None from
`run_unit_command` *before anything is written or printed*: the full CLI then does the whole
command. Once the first write went out, errors are reported as the full CLI reports them (one
line, exit 1). The writes, the order of the output lines, the blocking wait on the API's
change feed (GET /fleet/v1/_watch/units, docs/api.md) and the exit codes are those of
fleetctl/commands/units.py + unitops.py with fleetctl/api_client.py: tests/etcd/
test_fleetctl_fast_units.py runs both against a real fleetd API on real etcd and compares
stdout, stderr and exit codes byte for byte, and pins the import set. Two reads differ, to save
round trips (each 5-20 ms on a busy machine) without changing an answer: units this command has
just created (201) are not read back (they are not global), and the machines' list for the
`on <machine>` legends is read alongside the wait's first check instead of after the first unit
got there. One write differs: `start` and `load` create new units in the wanted desired state at
once (fleet's API takes it in the create), where the full CLI, as fleet's fleetctl, creates them
inactive and sets the state in a second request per unit: for a 30-unit start that second round
of 30 writes took 0.1-0.35 s on this machine, and the engine placed the units in several passes
as their states trickled in, so each node's agent started them in several passes too. Several new
units go in one `POST /units` (fleetctl/fast_create.py); a lone local unit file is created before
the lookup (a 412 writes nothing, and the lookup follows), one round trip less for `start X`;
2 to 60 local unit files go first in one `POST /units` with `createAll` (all created if none
exists, else nothing written and the existing units in the answer: no lookup either way).
"""

from __future__ import annotations

import sys
import time

from fleetctl.fast_create import REQUIREMENT_SECTIONS, create, create_all, create_lone, local_options, set_states
from fleetctl.fast_http import API_PREFIX, Api, Failed, NotFast, global_options, locate, quote_name, until_next_check
from fleetctl.quickunit import is_plain_name, mangle, options_from_wire, unit_hash, wire_options, go_json
from fleetctl.progress import Progress

SECONDS_PER_ATTEMPT = 0.5
FAST_POLL, FAST_POLL_FOR = 0.025, 0.5  # fleetctl.client.poll_delays without a change feed
ACTIONS = {"start": ("launched", "start"), "load": ("loaded", "load"), "submit": (None, "submit")}

# ---------------------------------------------------------------------------- the commands


def _say(text: str) -> None:
    print(text, flush=True)


def _warn(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parse_command(args: list[str]) -> tuple[str, list[str], bool, int] | None:
    """(command, unit arguments, no_block, block_attempts) of a unit command line, or None."""
    if not args or args[0] not in ("submit", "load", "start", "stop", "destroy"):
        return None
    command, rest = args[0], args[1:]
    units: list[str] = []
    no_block, attempts = False, 0
    while rest:
        arg = rest.pop(0)
        if not arg.startswith("-") or arg == "-":
            units.append(arg)
            continue
        if command == "submit":  # only --replace and --sign: the full CLI's
            return None
        flag, eq, value = arg.partition("=")
        if flag == "--no-block" and not eq:
            no_block = True
        elif flag == "--block-attempts":
            if not eq:
                if not rest:
                    return None
                value = rest.pop(0)
            digits = value.strip()
            digits = digits[1:] if digits[:1] in ("+", "-") else digits
            if not (digits.isascii() and digits.isdigit()):  # [+-]?[0-9]+ (no re: fleetctl/lean.py)
                return None
            attempts = int(value)
        else:  # --replace, --sign, --help, --, anything else
            return None
    if not units:
        return None
    return command, units, no_block, attempts


def run_unit_command(argv: list[str], environ) -> int | None:
    """The exit code of the command done here, or None (nothing written or printed) for the
    full CLI."""
    found = global_options(argv, environ)
    if found is None:
        return None
    opts, args = found
    parsed = parse_command(args)
    if parsed is None or locate(opts) is None:
        return None
    command, units, no_block, attempts = parsed
    api = Api(opts)
    try:
        if command == "destroy":
            return destroy(api, units)
        if command == "stop":
            return stop(api, units, no_block, attempts)
        return submit_load_start(api, command, units, no_block, attempts)
    except NotFast:
        return None
    except Failed as exc:
        _warn(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130


def _lookup(api: Api, names: list[str]) -> dict[str, dict]:
    """Before any write: the named units in the registry (NotFast on any error)."""
    try:
        return api.units_named(names)
    except Failed:
        raise NotFast() from None


def _plain_existing(unit: dict) -> list[tuple[str, str, str]]:
    options = options_from_wire(unit)
    if options is None or not options or any(o[0] in REQUIREMENT_SECTIONS for o in options):
        raise NotFast()  # global units, requirements: the full CLI knows them
    return options


def resolve(api: Api, args: list[str], registry: dict[str, dict] | None = None) -> list[tuple[str, list | None, dict | None]]:
    """unitops.resolve_units for plain units: (name, options to create or None, the unit in the
    registry or None) per argument; NotFast for anything else. `registry`: the named units
    that exist, when already known (else read here)."""
    names = [mangle(a) for a in args]
    if (len(set(names)) != len(names) or not all(map(is_plain_name, names))
            or any(a.endswith("/") for a in args)):
        raise NotFast()
    if registry is None:
        registry = _lookup(api, names)
    resolved = []
    for arg, name in zip(args, names):
        existing = registry.get(name)
        options = local_options(arg)
        if existing is not None:
            existing_options = _plain_existing(existing)  # NotFast unless a plain unit
            if options is not None and unit_hash(options) != unit_hash(existing_options):
                raise NotFast()  # the full CLI warns (or replaces)
            resolved.append((name, None, existing))
        elif options is not None:
            resolved.append((name, options, None))
        else:
            raise NotFast()  # not found (or an instance of a template): the full CLI's error
    return resolved


def finish_wait(wait, pending: list[str], state: str, attempts: int, progress, warn) -> int:
    """Run a blocking wait (`wait(timeout)`: True once every unit reached `state`) for
    `attempts` x SECONDS_PER_ATTEMPT (<= 0: no limit); exit code 0, or 1 after one line per
    unit still pending, as the full CLI's wait."""
    timeout = None if attempts <= 0 else attempts * SECONDS_PER_ATTEMPT
    try:
        reached = wait(timeout)
    finally:
        progress.clear()
    if reached:
        return 0
    for name in pending:
        warn(f"Error waiting for units: timed out waiting for unit {name} to report state {state}")
    return 1


def announce_reached(name: str, state: str, machine: str | None, legend, progress, say) -> None:
    """A blocking wait's line for a unit that reached its state: `Unit NAME STATE[ on MACHINE]`."""
    message = f"Unit {name} {state}"
    if machine:
        where = legend(machine)
        if where is not None:
            message += f" on {where}"
    progress.clear()
    say(message)


def submit_load_start(api: Api, command: str, args: list[str], no_block: bool, attempts: int) -> int:
    state, action = ACTIONS[command]
    lone = create_lone(api, args, state)
    if lone is not None:
        _say(f"Unit {lone} inactive")
        return 0 if state is None else wait_for_states(api, [lone], state, action, no_block, attempts)
    registry, created_all = create_all(api, args, state)
    if created_all is not None:
        for name in created_all:
            _say(f"Unit {name} inactive")
        return 0 if state is None else wait_for_states(api, created_all, state, action, no_block, attempts)
    resolved = resolve(api, args, registry)
    new = [(name, options) for name, options, existing in resolved if options is not None]
    created: set[str] = set()
    if new:  # client.create_units: PUT If-None-Match: *, 201 or 412; created in the wanted state
        paths = [f"{API_PREFIX}/units/{quote_name(name)}" for name, _ in new]
        bodies = [go_json({"name": name, "desiredState": state or "inactive", "options": wire_options(options)})
                  for name, options in new]
        answers = create(api, paths, bodies)
        for path, answer in zip(paths, answers):
            if isinstance(answer, Exception):
                raise answer
            if answer[0] not in (201, 412):
                raise api.error("PUT", path, *answer)
        created = {name for (name, _), answer in zip(new, answers) if answer[0] == 201}
        for name, _ in new:
            _say(f"Unit {name} inactive")
    if state is None:
        return 0
    names = [name for name, _, _ in resolved]
    # units this command just created (201) have the wanted state already and are not global:
    # not read again, not written again, waited for
    infos = {}
    if set(names) - created:
        infos.update(api.units_named([n for n in names if n not in created]))
    if set(names) - created - set(infos):
        missing = next(n for n in names if n not in created and n not in infos)
        raise Failed(f"Error: unit {missing} not found")
    to_change = [n for n in names if n not in created and (infos[n].get("desiredState") or "inactive") != state]
    try:
        set_states(api, to_change, state)
    except Failed as exc:  # as submit_and_set: every FleetError of set_desired_state
        raise Failed(f"Error {'starting' if action == 'start' else 'loading'} units: {str(exc)[len('Error: '):]}") from None
    return wait_for_states(api, [n for n in names if n in created or n in to_change], state, action, no_block, attempts)


def stop(api: Api, args: list[str], no_block: bool, attempts: int) -> int:
    """units.stop (_set_and_wait with _to_stop) for plain units: set them to loaded, wait, and
    say `Successfully stopped units [...]`; NotFast for global units and "Unable to stop"."""
    names = list(dict.fromkeys(mangle(a) for a in args))
    found = _lookup(api, names)
    if not found:
        _warn("Units not found in registry")
        return 0
    units = [found[n] for n in names if n in found]
    for unit in units:
        _plain_existing(unit)
        if (unit.get("currentState") or "") == "inactive" and (unit.get("desiredState") or "inactive") == "inactive":
            raise NotFast()  # the full CLI's "Unable to stop unit X in state inactive"
    stopping = [u["name"] for u in units if (u.get("desiredState") or "inactive") != "loaded"]
    set_states(api, stopping, "loaded")
    code = wait_for_states(api, stopping, "loaded", "stop", no_block, attempts)
    if code == 0 and not no_block:
        _warn(f"Successfully stopped units [{' '.join(stopping)}].")
    return code


def poll_delays(poll: float = 0.25):
    """fleetctl.client.poll_delays(poll, fast_start=True)."""
    if poll > FAST_POLL:
        for _ in range(int(FAST_POLL_FOR / FAST_POLL)):
            yield FAST_POLL
        delay = FAST_POLL * 2
        while delay < poll:
            yield delay
            delay *= 2
    while True:
        yield poll


def wait_for_states(api: Api, names: list[str], state: str, action: str, no_block: bool, attempts: int) -> int:
    """unitops.wait_for_states with api_client.ApiFleetClient.wait (launched or loaded)."""
    if not names:
        return 0
    if no_block:
        for name in names:
            _say(f"Triggered unit {name} {action}")
        return 0
    pending = list(names)
    machines: dict[str, str] = {}
    progress = Progress(len(pending), state)
    first = [True]

    def learn(found: list[dict]) -> None:
        from fleetctl.output import machine_id_legend

        for m in found:
            ip, mid = m.get("primaryIP", ""), m.get("id", "")
            machines[mid] = f"{machine_id_legend(mid, False)}/{ip}" if ip else machine_id_legend(mid, False)

    def legend(machine_id: str) -> str | None:
        if machine_id not in machines:  # as MachineLegends: read again for a machine not seen
            learn(api.pages("machines", "machines"))
        return machines.get(machine_id)

    def check(infos: dict[str, dict] | None = None, found: list[dict] | None = None) -> bool:
        if first:  # the machines' list with the first check, not after the last
            if infos is None and found is None:
                infos, found = api.units_and_machines(pending)
            elif infos is None:  # a server without the feed's units
                infos = api.units_named(pending)
            learn(api.pages("machines", "machines") if found is None else found)
            first.clear()
        elif infos is None:  # the change feed answered without the units
            infos = api.units_named(pending)
        for name in list(pending):
            info = infos.get(name)
            if info is not None and (info.get("currentState") or "") == state:
                pending.remove(name)
                announce_reached(name, state, info.get("machineID"), legend, progress, _say)
        if pending:
            progress.update(len(names) - len(pending))
        return not pending

    return finish_wait(lambda timeout: _wait(api, check, timeout, names), pending, state, attempts,
                       progress, _warn)


def _wait(api: Api, check, timeout: float | None, names: list[str]) -> bool:
    """api_client.ApiFleetClient.wait: check, then a long poll of the change feed, and again.
    The feed answers with the units it read after its revision (docs/api.md, `units=true`), so
    a check needs no read of its own: the first costs one round trip (with the machines' list),
    each later one none."""
    deadline = None if timeout is None else time.monotonic() + timeout
    since, infos, found = api.feed_and_machines(names)
    delays = poll_delays()
    answered: dict = {}

    def feed(s: int, hold: float) -> int | None:
        revision, answered["units"] = api.feed(names, s, hold, units=True)
        return revision

    while True:
        if check(infos, found):
            return True
        go_on, since = until_next_check(feed, since, deadline, delays)
        infos, found = answered.pop("units", None), None
        if not go_on:
            return False


def destroy(api: Api, args: list[str]) -> int:
    """units.destroy: the named units that exist, deleted; `Destroyed X` for each."""
    names = list(dict.fromkeys(mangle(a) for a in args))
    found = _lookup(api, names)
    if not found:
        _warn("Units not found in registry")
        return 0
    doomed = [n for n in names if n in found]
    paths = [f"{API_PREFIX}/units/{quote_name(n)}" for n in doomed]
    answers = api.many([("DELETE", p, None, ()) for p in paths])
    for path, answer in zip(paths, answers):
        if isinstance(answer, Exception):
            raise answer
        if answer[0] not in (204, 404):
            raise api.error("DELETE", path, *answer)
    for name, answer in zip(doomed, answers):
        if answer[0] == 204:
            _say(f"Destroyed {name}")
    return 0
