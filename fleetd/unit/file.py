"""systemd unit-file syntax: parse, canonical serialization, content hash.

INTERFACE FIXED BY THE LEAD; implementation to be written.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UnitOption:
    section: str
    name: str
    value: str


@dataclass(frozen=True)
class UnitFile:
    options: tuple[UnitOption, ...]

    @classmethod
    def parse(cls, text: str | bytes, *, source: str = "<unit>") -> "UnitFile":
        raise NotImplementedError

    def serialize(self) -> str:
        raise NotImplementedError

    @property
    def hash(self) -> str:
        raise NotImplementedError
