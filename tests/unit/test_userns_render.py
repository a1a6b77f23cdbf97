"""User namespaces for container units (issue 17): PrivateUsers= in [X-Container], the rendered
--private-users= range of both runtimes (the same range for the same container), and when it is
left out (nspawn: no flag; fleet-run: --private-users=no, as its default is a namespace). Pure."""

from __future__ import annotations

import pytest

from fleetd.container.render import USERNS_SIZE, ImageInfo, NodeFacts, render_unit, userns_base
from fleetd.unit.container import container_spec
from fleetd.errors import InvalidUnitOptions
from fleetd.unit.file import UnitFile

IMAGE = ImageInfo(ref="busybox", digest="sha256:" + "a" * 64, rootfs="/var/lib/fleet/images/x/rootfs")
USERNS = NodeFacts(userns=True)


def unit(extra: str = "", runtime: str = "nspawn") -> UnitFile:
    return UnitFile.parse(f"[Unit]\nDescription=t\n\n[X-Container]\nImage=busybox\nRuntime={runtime}\n"
                          f"Command=httpd -f\n{extra}")


def flag(text: str) -> str | None:
    found = [w for w in text.split() if w.startswith("--private-users")]
    assert len(found) <= 1
    found = [w for w in found if w != "--private-users=no"]  # fleet-run's explicit opt-out
    return found[0] if found else None


@pytest.mark.parametrize("runtime", ["nspawn", "launcher"])
def test_default_is_a_user_namespace_where_the_kernel_allows(runtime):
    text = render_unit("web.service", unit(runtime=runtime), USERNS, IMAGE)
    base = userns_base("web")
    assert flag(text) == f"--private-users={base}:{USERNS_SIZE}"
    assert flag(render_unit("web.service", unit(runtime=runtime), NodeFacts(userns=False), IMAGE)) is None


@pytest.mark.parametrize("runtime", ["nspawn", "launcher"])
@pytest.mark.parametrize("extra", ["PrivateUsers=no\n", "Privileged=yes\n"])
def test_opt_out_and_privileged_have_none(extra, runtime):
    text = render_unit("web.service", unit(extra, runtime), USERNS, IMAGE)
    assert flag(text) is None
    assert ("--private-users=no" in text.split()) == (runtime == "launcher")


@pytest.mark.parametrize("runtime", ["nspawn", "launcher"])
def test_privileged_may_still_ask_for_one(runtime):
    text = render_unit("web.service", unit("Privileged=yes\nPrivateUsers=yes\n", runtime), USERNS, IMAGE)
    assert flag(text) is not None


def test_spec_and_errors():
    assert container_spec(unit(), "w.service").private_users is True
    assert container_spec(unit("PrivateUsers=off\n"), "w.service").private_users is False
    with pytest.raises(InvalidUnitOptions, match="PrivateUsers"):
        container_spec(unit("PrivateUsers=maybe\n"), "w.service")


def test_bases_are_stable_aligned_and_in_nspawns_range():
    names = [f"c{i}" for i in range(2000)]
    bases = [userns_base(n) for n in names]
    assert bases == [userns_base(n) for n in names]
    assert all(b % USERNS_SIZE == 0 and 0x80000 <= b and b + USERNS_SIZE <= 0x6FFF0000 for b in bases)
    assert len(set(bases)) > 1900  # spread over ~28,000 slots


def test_facts_round_trip():
    assert NodeFacts.from_json(USERNS.to_json()) == USERNS
    assert NodeFacts.from_json({"fleetRun": "/x"}).userns is False  # an older fleetd's facts
    assert "userns" not in NodeFacts().to_json()
