"""What every fleetctl command shares: the global options' object, the client, running a
command body, one-line errors, shared options and the deprecation helper.

A command body is a coroutine `async def body(g: Globals, **params) -> int` wrapped by `@run`.
With a driver whose coroutines never suspend (the API driver) `run` drives it without an event
loop, so asyncio is never imported; with the etcd driver it runs it under asyncio.run. Bodies
use `gather()` and `in_thread()` from here instead of asyncio's, which work both ways.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Coroutine, TypeVar
from urllib.parse import urlsplit

import click

from fleetd.config import EtcdSettings
from fleetd.errors import FleetError
from fleetctl.client import FleetClient
from fleetctl.sshopts import SshOptions

if TYPE_CHECKING:  # pragma: no cover
    from fleetctl.ssh import SshTunnel

DEFAULT_ENDPOINT = "unix:///var/run/fleet.sock"
DEFAULT_ETCD_ENDPOINT = "http://127.0.0.1:2379"
SECONDS_PER_ATTEMPT = 0.5  # fleetctl's checkUnitState sleeps 500 ms between attempts
SIGN_DEPRECATED = "WARNING: The signed/verified units feature is DEPRECATED and cannot be used."

T = TypeVar("T")


class CommandFailed(Exception):
    """Print `message` on stderr (one line) and exit with `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


@dataclass
class Globals:
    endpoint: str
    driver: str
    etcd_key_prefix: str
    request_timeout: float
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    debug: bool
    ssh: SshOptions = field(default_factory=SshOptions)
    _client: FleetClient | None = field(default=None, repr=False)
    _tunnel: SshTunnel | None = field(default=None, repr=False)

    def client(self) -> FleetClient:
        if self._client is None:
            self._client = make_client(self)
        return self._client

    @property
    def driver_name(self) -> str:
        return choose_driver(self.endpoint, self.driver)

    def close_tunnel(self) -> None:
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None


def choose_driver(endpoint: str, driver: str) -> str:
    """fleet's rule: an explicit driver wins; otherwise etcd for ports 2379/4001, else the API."""
    if driver:
        return driver.lower()
    first = endpoint.split(",")[0]
    try:
        port = urlsplit(first if "://" in first else f"http://{first}").port
    except ValueError:
        port = None
    return "etcd" if port in (2379, 4001) else "api"


def _tunnelled(g: Globals, target: tuple) -> str:
    """Start the --tunnel SSH forward to `target`; returns the local address to use instead."""
    from fleetctl.ssh import SshTunnel

    g._tunnel = SshTunnel(g.ssh, target)
    return g._tunnel.start()


def make_client(g: Globals) -> FleetClient:
    driver = choose_driver(g.endpoint, g.driver)
    if driver == "etcd":
        from fleetctl.etcd_client import EtcdFleetClient

        endpoint = DEFAULT_ETCD_ENDPOINT if g.endpoint == DEFAULT_ENDPOINT else g.endpoint
        if g.ssh.tunnel:
            first = endpoint.split(",")[0].strip()
            url = urlsplit(first if "://" in first else f"http://{first}")
            local = _tunnelled(g, ("tcp", url.hostname or "127.0.0.1", url.port or 2379))
            endpoint = f"{url.scheme}://{local}"
        settings = EtcdSettings(
            endpoints=tuple(e.strip() for e in endpoint.split(",") if e.strip()),
            key_prefix=g.etcd_key_prefix,
            cafile=g.ca_file,
            certfile=g.cert_file,
            keyfile=g.key_file,
            request_timeout=g.request_timeout,
        )
        return EtcdFleetClient(settings)
    if driver == "api":
        from fleetctl.api_client import ApiFleetClient, parse_endpoint

        if "," in g.endpoint.strip(","):
            click.echo(f"WARNING: the API driver uses only the first endpoint of {g.endpoint}", err=True)
        endpoint = g.endpoint
        if g.ssh.tunnel:
            ep = parse_endpoint(endpoint)
            if ep.unix_path is not None:
                endpoint = "unix://" + _tunnelled(g, ("unix", ep.unix_path))
            else:
                url = urlsplit(ep.base_url)
                local = _tunnelled(g, ("tcp", url.hostname, url.port or (443 if url.scheme == "https" else 80)))
                endpoint = f"{url.scheme}://{local}"
        return ApiFleetClient(endpoint, timeout=g.request_timeout, cafile=g.ca_file, certfile=g.cert_file, keyfile=g.key_file)
    raise CommandFailed(f"unknown driver {driver!r} (expected api or etcd)")


# ---------------------------------------------------------------------------- running a body


def run_without_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (the API driver's), without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("a fleetctl command suspended without an event loop (a driver needs one: "
                       "set needs_event_loop)")


def _loop_running() -> bool:
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def gather(*aws: Awaitable[T]) -> list[T]:
    """asyncio.gather under an event loop; one after the other without one."""
    if _loop_running():
        import asyncio

        return list(await asyncio.gather(*aws))
    return [await a for a in aws]


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking call (ssh, a subprocess): in a thread under an event loop, else directly."""
    if _loop_running():
        import asyncio

        return await asyncio.to_thread(fn, *args, **kwargs)
    return fn(*args, **kwargs)


def _needs_event_loop(g: Globals) -> bool:
    if g._client is not None:
        return g._client.needs_event_loop
    return g.driver_name != "api"


def run(coro_fn: Callable[..., Awaitable[int | None]]) -> Callable[..., None]:
    """Run an async command body with the client, mapping errors to one line and an exit code."""

    @functools.wraps(coro_fn)
    def wrapper(*args, **kwargs) -> None:
        g: Globals = click.get_current_context().obj

        async def main() -> int | None:
            try:
                return await coro_fn(g, *args, **kwargs)
            finally:
                if g._client is not None:
                    await g._client.close()
                g.close_tunnel()

        try:
            if _needs_event_loop(g):
                import asyncio

                code = asyncio.run(main())
            else:
                code = run_without_loop(main())
        except CommandFailed as exc:
            click.echo(str(exc), err=True)
            sys.exit(exc.code)
        except FleetError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            sys.exit(130)
        sys.exit(code or 0)

    return wrapper


# ---------------------------------------------------------------------------- shared options


def blocking_options(no_block_help: str = "Do not wait for the units to reach the state.",
                     attempts_help: str = "Wait at most N attempts (0.5 s each); 0 waits forever."):
    """--no-block and --block-attempts of the commands that wait (start, stop, load, run...)."""

    def decorate(fn):
        fn = click.option("--no-block", is_flag=True, help=no_block_help)(fn)
        fn = click.option("--block-attempts", default=0, show_default=True, type=int, help=attempts_help)(fn)
        return fn

    return decorate


def block_timeout(block_attempts: int) -> float | None:
    return None if block_attempts <= 0 else block_attempts * SECONDS_PER_ATTEMPT


def sign_option(fn):
    return click.option("--sign", is_flag=True, hidden=True, help="DEPRECATED - this option cannot be used")(fn)


def deprecated_sign() -> None:
    """fleet's unit signing is gone: a command or flag asking for it exits 2."""
    raise CommandFailed(SIGN_DEPRECATED, code=2)


def fail_now(exc: CommandFailed) -> None:
    """For a command outside `run`: print a CommandFailed as `run` does and exit."""
    click.echo(str(exc), err=True)
    sys.exit(exc.code)


def list_options(default_fields: str, valid: dict):
    """--fields, --full, --no-legend, --output of the list commands."""

    def decorate(fn):
        fn = click.option("--output", "output_format", type=click.Choice(["table", "json"]), default="table",
                          show_default=True, help="Output format (json is beyond fleet).")(fn)
        fn = click.option("--no-legend", is_flag=True, help="Do not print a legend (column headers).")(fn)
        fn = click.option("--full", "-l", is_flag=True, help="Do not ellipsize fields on output.")(fn)
        fn = click.option("--fields", default=default_fields, show_default=True,
                          help=f"Columns to print. Valid fields: {','.join(sorted(valid))}.")(fn)
        return fn

    return decorate


def print_table(cols: list[str], rows: list[list[str]], no_legend: bool) -> None:
    from fleetctl import output

    header = [[c.upper() for c in cols]] if not no_legend else []
    click.echo(output.tabwrite(header + rows), nl=False)


def parse_fields(spec: str, valid: dict) -> list[str]:
    from fleetctl import output

    try:
        cols = output.parse_fields(spec, valid)
    except ValueError as exc:
        raise CommandFailed(str(exc)) from None
    if "tmachine" in cols:
        click.echo('WARNING: The "tmachine" field is deprecated. Use "target" instead', err=True)
    return cols
