"""Helpers for tests and benchmarks that need real external parts (an etcd server)."""
