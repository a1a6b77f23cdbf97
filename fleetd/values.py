"""Boolean words: the one definition every fleetd module parses booleans with.

Two rules, both fleet's:

* :func:`parse_bool` is strict (fleet.conf values, `[X-Container] Privileged=`): one of the
  true or false words (any case) or None for anything else, so that the caller can name the
  file and key in its error;
* :func:`is_truthy` is fleet's lenient isTruthyValue (`[X-Fleet] Global=`): true for
  true/yes/1/on/t (any case), false for everything else, "y" included (fleet does the same).
"""

from __future__ import annotations

TRUE_WORDS = frozenset({"1", "t", "true", "yes", "on", "y"})
FALSE_WORDS = frozenset({"0", "f", "false", "no", "off", "n"})
FLEET_TRUTHY = frozenset({"true", "yes", "1", "on", "t"})  # fleet's isTruthyValue


def parse_bool(text: str) -> bool | None:
    """True or False for a boolean word (surrounding blanks and case ignored), else None."""
    lowered = text.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    return None


def is_truthy(value: str) -> bool:
    """fleet's isTruthyValue."""
    return value.lower() in FLEET_TRUTHY
