"""fleet-lab bench compare without the original fleet's binaries: it skips with the reason."""

from __future__ import annotations

from fleetlab.bench.compare import compare
from fleetlab.peer import peer_dir, peer_problem


def test_compare_skips_with_the_reason_without_peer_binaries(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEET_PEER_DIR", str(tmp_path))
    assert peer_dir() == tmp_path
    reason = peer_problem()
    assert reason == f"the original fleet's fleetd is not at {tmp_path / 'fleetd'} (see ../shared/peer/README.md)"
    assert compare() == {"benchmark": "compare", "skipped": reason}   # no lab is booted


def test_peer_dir_defaults_to_shared_peer_next_to_the_project(monkeypatch):
    monkeypatch.delenv("FLEET_PEER_DIR", raising=False)
    assert peer_dir().parts[-2:] == ("shared", "peer")
    (fake := peer_dir())  # noqa: F841 - the path is computed, never created
