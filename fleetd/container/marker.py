"""The first line of a rendered container unit: the hash of the stored (declared) unit.

    # fleet-hash: <sha1 of the stored unit's serialization>

The agent compares that hash, not the hash of the rendered text, with the desired one, so
that rendering does not change what "the same unit" means (adoption after a restart).
"""

from __future__ import annotations

import re

HASH_COMMENT = "# fleet-hash: "
_HASH_LINE_RE = re.compile(r"^# fleet-hash: ([0-9a-f]{40})$")


def stored_hash_of(text: str) -> str | None:
    """The stored unit's hash recorded in a rendered file's first line, or None."""
    first = text.split("\n", 1)[0].strip()
    m = _HASH_LINE_RE.match(first)
    return m.group(1) if m else None
