"""The unit files shown in README.md and docs/tutorial.md (their ```ini blocks) are valid as
shown, and so are the example units in units/: they pass the same checks as `fleetctl submit`
([X-Fleet], [X-Container], [X-Service])."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fleetd.unit.container import container_spec, is_container_unit
from fleetd.unit.file import UnitFile
from fleetd.unit.requirements import validate_unit
from fleetd.unit.service import validate_services

REPO = Path(__file__).resolve().parents[2]
BLOCKS = [(doc, i, m.group(1)) for doc in ("README.md", "docs/tutorial.md")
          for i, m in enumerate(re.finditer(r"^```ini\n(.*?)^```$", (REPO / doc).read_text(), re.M | re.S))]


def test_the_documents_show_units():
    assert {doc for doc, _, _ in BLOCKS} == {"README.md", "docs/tutorial.md"}


@pytest.mark.parametrize("doc,index,text", BLOCKS, ids=[f"{d}#{i}" for d, i, _ in BLOCKS])
def test_unit_block_is_valid(doc, index, text):
    unit = UnitFile.parse(text)
    requirements = validate_unit(unit, "web@1.service")
    assert not requirements.unknown_options, (doc, index)
    validate_services(unit, "web@1.service")
    if is_container_unit(unit):
        assert container_spec(unit, "web@1.service").image == "busybox"


@pytest.mark.parametrize("path", sorted((REPO / "units").glob("*.service")), ids=lambda p: p.name)
def test_shipped_unit_is_valid(path):
    name = path.name.replace("@.", "@1.")
    unit = UnitFile.parse(path.read_text())
    assert not validate_unit(unit, name).unknown_options
    validate_services(unit, name)
    if is_container_unit(unit):
        container_spec(unit, name)
