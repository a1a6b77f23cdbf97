"""How deep a test run digs: "full" (the default, CI's `scripts/test.sh`) or "fast" (the fast
loop, `scripts/test.sh -m "not lab"`, under a minute on a 2-core machine).

How many examples a hypothesis property tries depends on the depth, and the tests marked `deep`
(a long fuzz run, an external validator, a thousand-unit browser run, a second TTL) are skipped
by the fast loop; the full suite runs every test with every example. tests/conftest.py
sets the depth once per session: $FLEET_TEST_DEPTH if set (`fast` or `full`), otherwise "fast"
when the `-m` expression leaves out the lab tests and "full" otherwise; it loads the hypothesis
profile of the same name (the fast one: 10 examples for properties without their own count).
"""

from __future__ import annotations

import os

DEPTHS = ("full", "fast")
#: a fast run tries this share of a property's examples (at least MIN_FAST_EXAMPLES)
FAST_SHARE = 10
MIN_FAST_EXAMPLES = 5


def depth() -> str:
    value = os.environ.get("FLEET_TEST_DEPTH", "full")
    if value not in DEPTHS:
        raise ValueError(f"FLEET_TEST_DEPTH={value!r}: expected one of {', '.join(DEPTHS)}")
    return value


def examples(full: int) -> int:
    """max_examples for a property: `full` in the full suite, a tenth of it (at least 5) in the
    fast loop."""
    if depth() == "full":
        return full
    return min(full, max(MIN_FAST_EXAMPLES, full // FAST_SHARE))


def depth_for(markexpr: str) -> str:
    """The depth of a run with this `-m` expression when $FLEET_TEST_DEPTH does not say."""
    return "fast" if "not lab" in " ".join(markexpr.split()) else "full"
