"""fleetctl's fast path for `submit`, `load`, `start`, `stop` and `destroy` of plain units with
the etcd driver (`--driver=etcd`, or an endpoint on port 2379/4001; issue 14).

The full CLI's etcd driver (fleetctl/etcd_client.py over fleetd.registry) imports aetcd, gRPC,
protobuf and asyncio: ~0.3 s before the first request. This module does the same commands on
the standard library alone, through the registry's `UnitGateway` (fleetd/registry/gateway.py:
the registry's key layout, value encodings and transactions) on etcd's JSON gateway over
HTTP/1.1 for http:// endpoints, or on etcd's gRPC API itself for https://
(fleetd/registry/grpc_lite.py: etcd 3.4 refuses certificate users through its gateway once
auth is on), for the cases fleetctl/fast_units.py knows for the API driver: plain units (no
template, instance, [X-Fleet], [X-Container] or [X-Service]), local files the quick parser
reads or units already in the registry with the same body, flags --no-block and
--block-attempts. The global flags it reads are the full CLI's (--endpoint, --driver,
--etcd-key-prefix, --request-timeout, --ca-file, --cert-file, --key-file and their FLEETCTL_*
variables); TLS with client certificates is the standard library's ssl.

Anything else, and anything unexpected before the first write (no etcd, no gateway, an etcd
error such as permission denied, a record or body it cannot read...), returns None from
`run_etcd_command` before anything is written or printed: the full CLI then does the whole
command. The writes (keys, values, compare-and-swap), the output, the exit codes and the
blocking wait are the full CLI's etcd driver's (fleetctl/commands/units.py + unitops.py with
fleetctl/etcd_client.py): the wait checks each unit's current state as fleetd.jobstate does,
after each change reported by a watch of the jobs, the schedule and the states (from the
revision of the first check), or every 0.25 s as the full CLI's safety net.
tests/etcd/test_fleetctl_fast_etcd.py compares both byte for byte on real etcd and pins the
import set.
"""

from __future__ import annotations

from fleetctl.fast_etcd_state import Units, say, wait_for_states, warn
from fleetctl.fast_http import NotFast, global_options
from fleetctl.fast_units import REQUIREMENT_SECTIONS, local_options, parse_command
from fleetctl.quickunit import is_plain_name, mangle, serialize, unit_hash

DEFAULT_ENDPOINT = "unix:///var/run/fleet.sock"  # fleetctl.commands.common
DEFAULT_ETCD_ENDPOINT = "http://127.0.0.1:2379"
DEFAULT_KEY_PREFIX = "/_coreos.com/fleet/"  # fleetd.config
ACTIONS = {"start": ("launched", "start"), "load": ("loaded", "load"), "submit": (None, "submit")}

# global flag or FLEETCTL_ variable -> its setting (the full CLI's names)
FLAGS = {"--endpoint": "endpoint", "--driver": "driver", "--etcd-key-prefix": "prefix",
         "--request-timeout": "timeout", "--ca-file": "ca", "--cert-file": "cert", "--key-file": "key",
         "--etcd-cafile": "ca_old", "--etcd-certfile": "cert_old", "--etcd-keyfile": "key_old"}
ENVIRONMENT = {"FLEETCTL_ENDPOINT": "endpoint", "FLEETCTL_DRIVER": "driver", "FLEETCTL_ETCD_KEY_PREFIX": "prefix",
               "FLEETCTL_REQUEST_TIMEOUT": "timeout", "FLEETCTL_CA_FILE": "ca", "FLEETCTL_CERT_FILE": "cert",
               "FLEETCTL_KEY_FILE": "key"}


class Failed(Exception):
    """After the first write: print this line on stderr and exit 1 (the full CLI's error)."""


# ---------------------------------------------------------------------------- options


def _port(endpoint: str) -> int | None:
    """The port of the first endpoint when it says one (fleet's choice of driver), else None."""
    from fleetd.registry.gateway import parse_endpoint

    first = endpoint.split(",")[0]
    where = parse_endpoint(first)
    return where[2] if where is not None and first.rstrip("/").rpartition(":")[2].isdigit() else None


def etcd_settings(argv: list[str], environ) -> tuple[dict, list[str]] | None:
    """The etcd driver's settings as the full CLI makes them (fleetctl.commands.common.make_client,
    fleetd.config.EtcdSettings) and the command line's rest; None unless the driver is etcd
    and the settings are plain ones."""
    found = global_options(argv, environ)  # refuses flags and variables it does not know, --tunnel
    if found is None:
        return None
    _, rest = found
    values = {"endpoint": DEFAULT_ENDPOINT, "driver": "", "prefix": DEFAULT_KEY_PREFIX, "timeout": "3.0"}
    values.update((ENVIRONMENT[k], v) for k, v in environ.items() if k in ENVIRONMENT and v)
    flags = list(argv[:len(argv) - len(rest)])
    while flags:
        flag, eq, value = flags.pop(0).partition("=")
        if not eq:
            value = flags.pop(0)
        if flag in FLAGS:
            values[FLAGS[flag]] = value
    endpoint, driver = values["endpoint"], values["driver"]
    if (driver.lower() if driver else "etcd" if _port(endpoint) in (2379, 4001) else "api") != "etcd":
        return None
    if endpoint == DEFAULT_ENDPOINT:
        endpoint = DEFAULT_ETCD_ENDPOINT
    endpoints = [e.strip() for e in endpoint.split(",") if e.strip()]
    try:
        timeout = float(values["timeout"])
    except ValueError:
        return None
    ca = values.get("ca") or values.get("ca_old") or None
    cert = values.get("cert") or values.get("cert_old") or None
    key = values.get("key") or values.get("key_old") or None
    from fleetd.registry.gateway import parse_endpoint

    where = [parse_endpoint(e) for e in endpoints]
    if (not endpoints or None in where or len({w[0] for w in where}) != 1 or not timeout > 0
            or bool(cert) != bool(key) or (where[0][0] == "http" and (ca or cert))):
        return None  # the full CLI's error, or TLS over an http:// URL (gRPC's, not this)
    prefix = values["prefix"] if values["prefix"].endswith("/") else values["prefix"] + "/"
    prefix = prefix if prefix.startswith("/") else "/" + prefix
    return {"endpoint": ",".join(endpoints), "scheme": where[0][0], "prefix": prefix, "timeout": timeout, "ca": ca,
            "cert": cert, "key": key}, rest


# ---------------------------------------------------------------------------- units


def plain(unit: dict) -> list:
    options = unit["options"]
    if any(o[0] in REQUIREMENT_SECTIONS for o in options):
        raise NotFast()  # global units, requirements: the full CLI knows them
    return options


# ---------------------------------------------------------------------------- the commands


def run_etcd_command(argv: list[str], environ) -> int | None:
    """The exit code of the command done here, or None (nothing written or printed) for the
    full CLI."""
    found = etcd_settings(argv, environ)
    if found is None:
        return None
    conf, args = found
    parsed = parse_command(args)
    if parsed is None:
        return None
    command, units, no_block, attempts = parsed
    from fleetd.errors import RegistryError
    from fleetd.registry.gateway import Gateway, GatewayError, UnitGateway

    tls = (conf["ca"], conf["cert"], conf["key"])
    try:
        if conf["scheme"] == "https":  # gRPC itself: etcd's gateway refuses certificate users under auth
            from fleetd.registry.grpc_lite import GrpcTransport

            transport = GrpcTransport(conf["endpoint"], conf["timeout"], *tls)
        else:
            transport = Gateway(conf["endpoint"], conf["timeout"], *tls)
        registry = UnitGateway(transport, conf["prefix"])
    except GatewayError:
        return None
    written = [False]

    def writing() -> None:
        written[0] = True

    try:
        if command == "destroy":
            return destroy(registry, units, writing)
        if command == "stop":
            return stop(registry, units, no_block, attempts, writing)
        return submit_load_start(registry, command, units, no_block, attempts, writing)
    except NotFast:
        return None
    except Failed as exc:
        warn(str(exc))
        return 1
    except RegistryError as exc:
        if not written[0]:
            return None
        warn(f"Error: {exc}")
        return 1
    except (ValueError, KeyError, TypeError, IndexError) as exc:  # a record that is not the registry's JSON
        if not written[0]:
            return None
        warn(f"Error: etcd error at {conf['endpoint']}: unexpected record: {exc!r}")
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        registry.close()


def resolve(units: Units, args: list[str]) -> tuple[list[tuple[str, list | None]], dict[str, dict], int]:
    """unitops.resolve_units for plain units: (name, options to create or None) per argument,
    the units found in the registry, the revision read; NotFast for anything else."""
    names = [mangle(a) for a in args]
    if (len(set(names)) != len(names) or not all(map(is_plain_name, names))
            or any(a.endswith("/") for a in args)):
        raise NotFast()
    revision, registry = units.named(names)
    if units.unreadable:
        raise NotFast()  # units_named leaves them out: the full CLI's
    resolved = []
    for arg, name in zip(args, names):
        existing = registry.get(name)
        options = local_options(arg)
        if existing is not None:
            if options is not None and unit_hash(options) != existing["hash"]:
                raise NotFast()  # the full CLI warns (or replaces)
            plain(existing)
            resolved.append((name, None))
        elif options is not None:
            resolved.append((name, options))
        else:
            raise NotFast()  # not found (or a unit whose body it cannot read): the full CLI's
    return resolved, registry, revision


def submit_load_start(registry, command: str, args: list[str], no_block: bool, attempts: int, writing) -> int:
    state, action = ACTIONS[command]
    units = Units(registry)
    resolved, known, _ = resolve(units, args)
    new = [(name, options) for name, options in resolved if options is not None]
    created: set[str] = set()
    records: dict = {}
    if new:
        writing()
        for _, options in new:
            units.learn(unit_hash(options), options)
        records = registry.create_units([(n, unit_hash(o), serialize(o)) for n, o in new])
        created = set(records)
        for name, _ in new:
            say(f"Unit {name} inactive")
    if state is None:
        return 0
    names = [name for name, _ in resolved]
    # what resolve read is the registry as it is (nothing written since but the units this
    # command created, which are inactive): read again only units someone else created meanwhile
    desired = {n: known[n]["desired"] for n in names if n in known}
    desired.update((n, "inactive") for n in created)
    if set(names) - set(desired):
        _, again = units.named([n for n in names if n not in desired])
        desired.update((n, u["desired"]) for n, u in again.items())
        if set(names) - set(desired):
            raise Failed(f"Error: unit {next(n for n in names if n not in desired)} not found")
    to_change = [n for n in names if desired[n] != state]
    if to_change:
        from fleetd.errors import RegistryError

        writing()
        try:
            registry.set_desired_state(to_change, state, {n: r for n, r in records.items() if n in to_change})
        except RegistryError as exc:  # submit_and_set: FleetError -> "Error starting units: ..."
            raise Failed(f"Error {'starting' if action == 'start' else 'loading'} units: {exc}") from None
    return wait_for_states(units, to_change, state, action, no_block, attempts)


def stop(registry, args: list[str], no_block: bool, attempts: int, writing) -> int:
    """units.stop (_set_and_wait with _to_stop) for plain units: set them to loaded, wait, and
    say `Successfully stopped units [...]`; NotFast for global units and "Unable to stop"."""
    units = Units(registry)
    names = list(dict.fromkeys(mangle(a) for a in args))
    if not all(map(is_plain_name, names)):
        raise NotFast()  # templates ("cannot activate a template") and instances: the full CLI's
    _, found = units.named(names)
    if units.unreadable:
        raise NotFast()
    if not found:
        warn("Units not found in registry")
        return 0
    stopping = []
    for name in (n for n in names if n in found):
        unit = found[name]
        plain(unit)
        if unit["current"] == "inactive" and unit["desired"] == "inactive":
            raise NotFast()  # the full CLI's "Unable to stop unit X in state inactive"
        if unit["desired"] != "loaded":
            stopping.append(name)
    if stopping:
        writing()
        registry.set_desired_state(stopping, "loaded")
    code = wait_for_states(units, stopping, "loaded", "stop", no_block, attempts)
    if code == 0 and not no_block:
        warn(f"Successfully stopped units [{' '.join(stopping)}].")
    return code


def destroy(registry, args: list[str], writing) -> int:
    """units.destroy: the named units that exist, deleted; `Destroyed X` for each."""
    units = Units(registry)
    names = list(dict.fromkeys(mangle(a) for a in args))
    _, found = units.named(names)
    if units.unreadable:
        raise NotFast()  # a unit whose body it cannot read: the full CLI's
    if not found:
        warn("Units not found in registry")
        return 0
    writing()
    for name in registry.destroy_units([n for n in names if n in found]):
        say(f"Destroyed {name}")
    return 0


