"""`fleet-lab box build`: the Debian 12 vagrant-libvirt box of the Vagrant lab (fleetlab.box)."""

from __future__ import annotations

from pathlib import Path

import click

from .box import BOX_NAME, default_cache_dir, ensure_box


@click.group("box")
def box() -> None:
    """The Vagrant lab's Debian 12 box (docs/vagrant.md)."""


@box.command()
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help=f"Where built boxes are kept (default: $FLEET_BOX_CACHE or {default_cache_dir()}).")
@click.option("--name", default=BOX_NAME, show_default=True, help="Name of the box in Vagrant.")
@click.option("--force", is_flag=True, help="Build again even if the inputs did not change.")
@click.option("--no-add", is_flag=True, help="Only build (or reuse) the .box file; skip `vagrant box add`.")
def build(cache_dir, name, force, no_add) -> None:
    """Build the box from Debian's packages (cached by the hash of its inputs) and add it to Vagrant.

    Idempotent: with unchanged inputs (package lists, Python requirements, the host's apt sources
    and CA certificates, the builder) the cached box is reused. Needs root.
    """
    out, digest, built = ensure_box(cache_dir, name, force=force, add=not no_add)
    click.echo(f"{name}: {out} (inputs {digest}, {'built' if built else 'cached'})")
