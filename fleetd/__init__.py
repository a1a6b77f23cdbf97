"""fleet for Python: fleetd, the per-node daemon, and the shared cluster model."""

__version__ = "0.1.0"
