"""A one-line progress display on stderr while fleetctl waits for many units.

Shown only when stdout is a terminal (interactive use); scripts and pipes see fleet's output only.
"""

from __future__ import annotations

import sys
from io import TextIOBase  # not typing.TextIO: fleetctl's fast path imports this module (no typing)


class Progress:
    def __init__(self, total: int, what: str, *, stream: TextIOBase | None = None, enabled: bool | None = None):
        self.total = total
        self.what = what
        self.stream = stream or sys.stderr
        self.enabled = (sys.stdout.isatty() and total > 1) if enabled is None else enabled
        self._shown = False

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        self.stream.write(f"\r\x1b[KWaiting for units to be {self.what}: {done}/{self.total}")
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        """Erase the line (before printing a result line, and at the end)."""
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
