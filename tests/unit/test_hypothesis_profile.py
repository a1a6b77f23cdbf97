"""tests/conftest.py loads a hypothesis profile without a per-example deadline at every depth
(a loaded machine is no failure: time belongs to the benchmarks)."""

import os

from hypothesis import settings


def test_no_deadline_and_the_depths_example_count():
    assert settings.default.deadline is None
    if os.environ.get("FLEET_TEST_DEPTH") == "fast":
        assert settings.default.max_examples == 10
