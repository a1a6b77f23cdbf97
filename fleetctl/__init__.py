"""fleetctl: the command-line client of fleet for Python."""
