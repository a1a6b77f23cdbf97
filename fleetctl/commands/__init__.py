"""fleetctl's commands, one module per family, loaded lazily (click's lazy-group pattern).

`COMMANDS` maps each command name to "module:attribute" of its click command; fleetctl/cli.py
imports a module only when one of its commands runs (or when every command is listed, for
`--help` and completion). Adding a family: write fleetctl/commands/<family>.py with plain
`@click.command()`s (see docs/fleetctl.md), and add one line per command here.
"""

from __future__ import annotations

COMMANDS: dict[str, str] = {
    # units
    "submit": "fleetctl.commands.units:submit",
    "load": "fleetctl.commands.units:load",
    "start": "fleetctl.commands.units:start",
    "stop": "fleetctl.commands.units:stop",
    "unload": "fleetctl.commands.units:unload",
    "destroy": "fleetctl.commands.units:destroy",
    "restart": "fleetctl.commands.units:restart",
    "cat": "fleetctl.commands.units:cat",
    "list-unit-files": "fleetctl.commands.units:list_unit_files",
    "list-units": "fleetctl.commands.units:list_units",
    # machines
    "list-machines": "fleetctl.commands.machines:list_machines",
    "drain": "fleetctl.commands.machines:drain",
    "undrain": "fleetctl.commands.machines:undrain",
    "set-metadata": "fleetctl.commands.machines:set_metadata",
    # on a machine
    "status": "fleetctl.commands.remote:status",
    "journal": "fleetctl.commands.remote:journal",
    "ssh": "fleetctl.commands.remote:ssh",
    "fd-forward": "fleetctl.commands.remote:fd_forward",
    # containers and images
    "run": "fleetctl.commands.containers:run_command",
    "run-pod": "fleetctl.commands.containers:run_pod",
    "images": "fleetctl.commands.images:images_command",
    "image": "fleetctl.commands.images:image_group",
    # service discovery
    "list-services": "fleetctl.commands.discovery:list_services",
    "list-endpoints": "fleetctl.commands.discovery:list_endpoints",
    # the cluster PKI (offline)
    "pki": "fleetctl.commands.pki:pki",
    # fleetctl itself
    "version": "fleetctl.commands.misc:version",
    "help": "fleetctl.commands.misc:help_command",
    "verify": "fleetctl.commands.misc:verify",
    "completion": "fleetctl.commands.misc:completion",
}
