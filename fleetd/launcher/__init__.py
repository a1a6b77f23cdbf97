"""fleet-run: a container launcher without an external runtime (see supervisor.py)."""
