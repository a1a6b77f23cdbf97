"""fleetd configuration, read like fleet's `fleet.conf`.

Precedence (lowest to highest): built-in defaults, the config file (INI-style `key=value` at top
level, default /etc/fleet/fleet.conf), `FLEET_<KEY>` environment variables, command-line flags.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from fleetd.errors import ConfigError
from fleetd.values import parse_bool as parse_boolean_word

DEFAULT_CONFIG_PATH = Path("/etc/fleet/fleet.conf")
DEFAULT_KEY_PREFIX = "/_coreos.com/fleet/"
DEFAULT_ETCD_SERVERS = ("http://127.0.0.1:2379",)


@dataclass(frozen=True)
class EtcdSettings:
    """How to reach etcd; shared by fleetd and fleetctl's etcd driver."""

    endpoints: tuple[str, ...] = DEFAULT_ETCD_SERVERS
    key_prefix: str = DEFAULT_KEY_PREFIX
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr, a log or an error
    request_timeout: float = 1.0

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ConfigError("etcd_servers: at least one endpoint is required")
        prefix = self.key_prefix if self.key_prefix.endswith("/") else self.key_prefix + "/"
        if not prefix.startswith("/"):
            prefix = "/" + prefix
        object.__setattr__(self, "key_prefix", prefix)
        if self.request_timeout <= 0:
            raise ConfigError(f"etcd_request_timeout must be positive, got {self.request_timeout}")
        if bool(self.certfile) != bool(self.keyfile):
            raise ConfigError("etcd_certfile and etcd_keyfile must be given together")
        if bool(self.username) != bool(self.password):
            raise ConfigError("etcd_username and etcd_password must be given together")


DEFAULT_SKYDNS_PREFIX = "/skydns/"  # where service discovery writes SkyDNS's keys (docs/discovery.md)


@dataclass(frozen=True)
class FleetConfig:
    etcd: EtcdSettings = EtcdSettings()
    public_ip: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    # fleet's default was 30 s (failover took ~25 s). etcd keeps leases alive across its own
    # leader changes, so a short TTL does not turn etcd hiccups into failovers; 5 s gives
    # failover in about 6 s. Raise it for clusters with unreliable links to etcd.
    agent_ttl: float = 5.0
    engine_reconcile_interval: float = 2.0
    disable_engine: bool = False
    units_directory: str = "/run/fleet/units/"
    systemd_user: bool = False
    token_limit: int = 100
    verbosity: int = 0
    machine_id_file: str = "/etc/machine-id"
    state_directory: str = "/run/fleet"
    api_socket: str = "/var/run/fleet.sock"
    api_socket_group: str = ""
    api_tcp: str = ""             # host:port; empty disables TCP
    api_insecure_tcp: bool = False
    api_cafile: str = ""
    api_certfile: str = ""
    api_keyfile: str = ""
    api_tcp_role: str = "operator"  # role of TCP clients: operator | read-only (fleetd/api/roles.py)
    images_directory: str = "/var/lib/fleet/images"  # the node's image store
    image_port: int = 7380        # image server on public_ip:image_port (0 or no public_ip: off)
    # service discovery (docs/discovery.md): the DNS responder (host:port; empty: off), the
    # domain it serves, what it does with other names ("" = the machine's resolv.conf
    # nameservers, "refuse", or a list of ip[:port]), the TTL of answers and SkyDNS keys, the
    # SkyDNS key prefix ("" = do not write SkyDNS keys), and how many health checks run at once
    dns_listen: str = ""
    dns_domain: str = "fleet.local"
    dns_upstream: str = ""
    dns_ttl: int = 5
    skydns_prefix: str = DEFAULT_SKYDNS_PREFIX
    check_concurrency: int = 16


def parse_duration(text: str, key: str) -> float:
    """'30s', '1m', '500ms', '2' (seconds) -> seconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*", text)
    if not match:
        raise ConfigError(f"{key}: invalid duration {text!r} (expected e.g. 30s, 500ms, 2m)")
    value = float(match.group(1))
    unit = match.group(2) or "s"
    seconds = value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    if seconds <= 0:
        raise ConfigError(f"{key}: duration must be positive, got {text!r}")
    return seconds


def parse_list(text: str) -> tuple[str, ...]:
    """fleet's list parser: strips brackets, quotes and spaces; `["a","b"]` and `a,b` both work."""
    cleaned = re.sub(r'[\[\]"\s]', "", text)
    return tuple(item for item in cleaned.split(",") if item)


def parse_metadata(text: str, key: str = "metadata") -> dict[str, str]:
    """`k=v,k=v`; spaces trimmed, a repeated key keeps the last value."""
    result: dict[str, str] = {}
    for pair in text.split(","):
        pair = pair.strip()
        if not pair:
            continue
        name, sep, value = pair.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            raise ConfigError(f"{key}: invalid pair {pair!r} (expected key=value)")
        result[name] = value
    return result


def parse_bool(text: str, key: str) -> bool:
    """A fleet.conf boolean (an empty value is false)."""
    value = parse_boolean_word(text) if text.strip() else False
    if value is None:
        raise ConfigError(f"{key}: invalid boolean {text!r}")
    return value


def read_config_file(path: Path) -> dict[str, str]:
    """Top-level `key=value` lines; `#`/`;` comments; optional quotes around values."""
    values: dict[str, str] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return values
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;" or line.startswith("["):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{path}:{lineno}: expected key=value, got {line!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip().lower()] = value
    return values


API_ROLES = ("operator", "read-only")  # the API's roles (fleetd/api/auth.py)

_ETCD_KEYS = {
    "etcd_servers": "endpoints",
    "etcd_key_prefix": "key_prefix",
    "etcd_cafile": "cafile",
    "etcd_certfile": "certfile",
    "etcd_keyfile": "keyfile",
    "etcd_username": "username",
    "etcd_password": "password",
    "etcd_request_timeout": "request_timeout",
}
# fleet keys accepted and ignored (disable_watches: fleetd always watches etcd and D-Bus)
_IGNORED_KEYS = {"verify_units", "authorized_keys_file", "enable_grpc", "public_ip_autodetect", "disable_watches"}


def _convert(name: str, raw: str, fields: dict[str, dataclasses.Field]) -> Any:
    kind = fields[name].type
    if name == "endpoints":
        return parse_list(raw)
    if name == "metadata":
        return parse_metadata(raw)
    if name in ("agent_ttl",):
        return parse_duration(raw, name)
    if name == "api_tcp_role":
        if raw not in API_ROLES:
            raise ConfigError(f"api_tcp_role: {raw!r} is not a role (expected {' or '.join(API_ROLES)})")
        return raw
    if kind in ("float", float) or name in ("request_timeout", "engine_reconcile_interval"):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{name}: invalid number {raw!r}") from None
    if kind in ("bool", bool):
        return parse_bool(raw, name)
    if kind in ("int", int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name}: invalid integer {raw!r}") from None
    return raw


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> FleetConfig:
    """Build the effective configuration. All sources use fleet.conf key names."""
    env = os.environ if env is None else env
    merged: dict[str, str] = {}
    merged.update(read_config_file(path or DEFAULT_CONFIG_PATH))
    for key, value in env.items():
        if key.startswith("FLEET_"):
            merged[key[len("FLEET_"):].lower()] = value
    merged.update({k.lower().replace("-", "_"): v for k, v in (overrides or {}).items() if v is not None})

    fleet_fields = {f.name: f for f in dataclasses.fields(FleetConfig)}
    etcd_fields = {f.name: f for f in dataclasses.fields(EtcdSettings)}
    fleet_kwargs: dict[str, Any] = {}
    etcd_kwargs: dict[str, Any] = {}
    for key, raw in merged.items():
        if key in _ETCD_KEYS:
            name = _ETCD_KEYS[key]
            value = _convert(name, raw, etcd_fields)
            if value not in ("", None):
                etcd_kwargs[name] = value
        elif key in fleet_fields and key != "etcd":
            fleet_kwargs[key] = _convert(key, raw, fleet_fields)
        elif key in _IGNORED_KEYS or key in ("config", "version", "config_file"):
            continue
        elif key.startswith("test_") or key.startswith("d_"):
            continue
        # Unknown environment variables starting with FLEET_ are common (FLEET_METADATA is
        # known, others may belong to other tools): ignore them silently, as fleet does.
    return FleetConfig(etcd=EtcdSettings(**etcd_kwargs), **fleet_kwargs)


def read_machine_id(path: str | Path) -> str:
    try:
        machine_id = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read machine ID: {exc.strerror}") from None
    if not re.fullmatch(r"[0-9a-f]{32}", machine_id):
        raise ConfigError(f"{path}: invalid machine ID {machine_id!r} (expected 32 hex characters)")
    return machine_id
