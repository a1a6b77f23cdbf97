"""fleetctl: fleet's command-line interface (click): the global options and the lazy command
group. The commands live in fleetctl/commands/ (one module per family, see COMMANDS there)."""

from __future__ import annotations

import importlib
import os
import sys

import click

from fleetd import __version__
from fleetd.config import DEFAULT_KEY_PREFIX
from fleetctl.commands import COMMANDS
from fleetctl.commands.common import DEFAULT_ENDPOINT, CommandFailed, Globals, choose_driver
from fleetctl.sshopts import DEFAULT_KNOWN_HOSTS, SshOptions

__all__ = ["CommandFailed", "LazyGroup", "choose_driver", "cli", "main"]


class LazyGroup(click.Group):
    """click's lazy-loading group (docs: "Lazily Loading Subcommands"): `lazy` maps a command
    name to "module:attribute", imported on first use. Commands may also be abbreviated to any
    unique prefix, as in fleet's CLI (cobra)."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def _load(self, name: str) -> click.Command:
        module_name, attr = self.lazy[name].split(":", 1)
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy[name]} is not a click command")
        return command

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            return self._load(name)
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        matches = [c for c in self.list_commands(ctx) if c.startswith(name)]
        if len(matches) == 1:
            return self.get_command(ctx, matches[0])
        if len(matches) > 1:
            ctx.fail(f"ambiguous command {name!r}: could be {', '.join(sorted(matches))}")
        return None

    def resolve_command(self, ctx, args):
        _, command, rest = super().resolve_command(ctx, args)
        return command.name if command else None, command, rest


CONTEXT = {"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "FLEETCTL", "max_content_width": 100}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings=CONTEXT, invoke_without_command=True)
@click.option("--endpoint", default=DEFAULT_ENDPOINT, show_default=True,
              help="fleet API endpoint (unix:///path or http(s)://host:port); with --driver=etcd, comma-separated etcd URLs.")
@click.option("--driver", default="", help="API or etcd. Default: etcd if the endpoint port is 2379 or 4001, else API.")
@click.option("--etcd-key-prefix", default=DEFAULT_KEY_PREFIX, show_default=True, help="Key prefix in etcd (etcd driver).")
@click.option("--request-timeout", default=3.0, show_default=True, type=float, help="Seconds to wait for a response.")
@click.option("--ca-file", default=None, help="CA certificate for TLS to the API or etcd.")
@click.option("--cert-file", default=None, help="Client certificate for TLS.")
@click.option("--key-file", default=None, help="Client key for TLS.")
@click.option("--etcd-cafile", "ca_file_old", default=None, hidden=True)
@click.option("--etcd-certfile", "cert_file_old", default=None, hidden=True)
@click.option("--etcd-keyfile", "key_file_old", default=None, hidden=True)
@click.option("--tunnel", default="", help="SSH bastion host[:port] to reach the endpoint through.")
@click.option("--ssh-username", default="core", show_default=True, help="User for --tunnel and ssh.")
@click.option("--ssh-timeout", default=10.0, show_default=True, type=float,
              help="Seconds to wait for an SSH connection to come up.")
@click.option("--strict-host-key-checking", type=click.BOOL, default=True, show_default=True,
              help="Verify host keys of remote machines against --known-hosts-file.")
@click.option("--known-hosts-file", default=DEFAULT_KNOWN_HOSTS, show_default=True,
              help="File with the host keys of remote machines (with strict host key checking).")
@click.option("--debug", is_flag=True, help="Print debug information on stderr.")
@click.option("--version", "-v", "show_version", is_flag=True, help="Print the version and exit.")
@click.pass_context
def cli(ctx: click.Context, endpoint, driver, etcd_key_prefix, request_timeout, ca_file, cert_file, key_file,
        ca_file_old, cert_file_old, key_file_old, tunnel, ssh_username, ssh_timeout, strict_host_key_checking,
        known_hosts_file, debug, show_version) -> None:
    """fleetctl: control a fleet cluster of systemd machines.

    The default driver is the fleet API (--endpoint unix:///var/run/fleet.sock, or
    http(s)://host:port of a fleetd's TCP API); --driver=etcd, or an endpoint on port
    2379/4001, talks to etcd directly. Every global flag can also come from the
    environment as FLEETCTL_<FLAG> (e.g. FLEETCTL_ENDPOINT, FLEETCTL_DRIVER).

    \b
    Exit status:
      0    success
      1    an error (one line on stderr), e.g. unknown unit, unreachable API
      2    usage error, or a deprecated command/flag (verify, --sign)
      N    ssh: the remote command's exit status
      130  interrupted (Ctrl-C)

    Shell completion: eval "$(fleetctl completion bash)" (or zsh, fish).
    """
    if show_version:
        click.echo(f"fleetctl version {__version__}")
        ctx.exit(0)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        ctx.exit(0)
    # errors reach the user as one line through the command; library logs only with --debug
    # (the API driver's path logs nothing: logging is not even imported there)
    if debug or choose_driver(endpoint, driver) != "api":
        import logging

        logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if debug else logging.CRITICAL,
                            format="fleetctl: %(name)s: %(message)s")
    ctx.obj = Globals(
        endpoint=endpoint,
        driver=driver,
        etcd_key_prefix=etcd_key_prefix,
        request_timeout=request_timeout,
        ca_file=ca_file or ca_file_old,
        cert_file=cert_file or cert_file_old,
        key_file=key_file or key_file_old,
        debug=debug,
        ssh=SshOptions(ssh_username, ssh_timeout, strict_host_key_checking, known_hosts_file, tunnel),
    )


def main() -> None:
    """Run the CLI, then leave without the interpreter's finalization.

    Every command has closed its connections, files and subprocesses by the time click exits;
    what is left is tearing down gRPC's threads and freeing every module, which took 30-80 ms
    (10-25 % of a whole `fleetctl start`). stdout/stderr and logging are flushed first.
    """
    try:
        cli(prog_name="fleetctl")
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a broken pipe: nothing more can be said
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
