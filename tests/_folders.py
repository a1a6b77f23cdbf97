"""The test folders' markers (tests/conftest.py gives every test of a folder its folder's markers)
and which folders a marker expression (`-m`) leaves out whole: those are not even imported
(the fast loop's `-m "not lab"`: tests/lab, functional and vm, ~0.2 CPU-s in every pytest-xdist
worker otherwise, for tests that are then deselected)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
FOLDER_MARKERS = {"etcd": ("etcd",), "lab": ("lab",), "functional": ("lab",), "vm": ("vm", "lab")}


def deselects_all(markexpr: str, markers: tuple[str, ...]) -> bool:
    """Whether `-m markexpr` deselects every test carrying `markers`, whatever other markers it
    has (each combination of the other names in the expression is tried). False for what this
    does not read: marker arguments, anything beyond names, and/or/not and parentheses."""
    tokens = re.findall(r"[()]|[^\s()]+", markexpr)
    if not tokens or any(t not in "()" and not re.fullmatch(r"[A-Za-z_]\w*", t) for t in tokens):
        return False
    if any(a not in ("and", "or", "not", "(") and b == "(" for a, b in zip(tokens, tokens[1:])):
        return False  # name(arguments)
    others = sorted({t for t in tokens if t not in ("and", "or", "not", "(", ")")} - set(markers))
    if len(others) > 10:
        return False
    for picked in itertools.product((False, True), repeat=len(others)):
        present = set(markers) | {name for name, on in zip(others, picked) if on}
        python = " ".join(t if t in ("and", "or", "not", "(", ")") else str(t in present) for t in tokens)
        try:
            if eval(python, {"__builtins__": {}}):  # only True/False, and/or/not, parentheses
                return False
        except SyntaxError:
            return False
    return True


def deselected_folder(path: Path, markexpr: str) -> bool:
    """Whether `path` is a test folder whose every test `markexpr` deselects."""
    return path.parent == TESTS and path.name in FOLDER_MARKERS and deselects_all(markexpr, FOLDER_MARKERS[path.name])
