"""fleetctl's commands about fleetctl itself: version, help, verify (deprecated), completion."""

from __future__ import annotations

import click

from fleetd import __version__
from fleetctl.commands.common import CommandFailed, deprecated_sign, fail_now


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script: eval "$(fleetctl completion bash)" (beyond fleet)."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    click.echo(cls(ctx.find_root().command, {}, "fleetctl", "_FLEETCTL_COMPLETE").source())


@click.command()
def version() -> None:
    """Print the version and exit."""
    click.echo(f"fleetctl version {__version__}")


@click.command()
@click.argument("unit", nargs=-1)
def verify(unit) -> None:
    """DEPRECATED: unit signing and verification."""
    try:
        deprecated_sign()
    except CommandFailed as exc:
        fail_now(exc)


@click.command("help")
@click.argument("command", required=False)
@click.pass_context
def help_command(ctx: click.Context, command: str | None) -> None:
    """Show help for fleetctl or for one command."""
    parent = ctx.parent
    group = parent.command
    if command:
        cmd = group.get_command(parent, command)
        if cmd is None:
            raise click.UsageError(f"unknown command {command!r}")
        click.echo(cmd.get_help(click.Context(cmd, info_name=command, parent=parent)))
    else:
        click.echo(group.get_help(parent))
