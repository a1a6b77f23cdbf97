"""systemd's object path of a unit (fleetd.agent.systemd.unit_object_path, bus_label_escape)
against the adapter's reading of one (unit_name_from_path); the bus match rules of a watched
unit name exactly that path. tests/lab/test_systemd_adapter.py checks them against systemd."""

from __future__ import annotations

from hypothesis import given, strategies as st

from fleetd.agent.systemd import UNIT_PATH_PREFIX, unit_match_rules, unit_name_from_path, unit_object_path


def test_known_paths():
    assert unit_object_path("sdx-a.service") == UNIT_PATH_PREFIX + "sdx_2da_2eservice"
    assert unit_object_path("web@1.service") == UNIT_PATH_PREFIX + "web_401_2eservice"
    assert unit_object_path("0x.service") == UNIT_PATH_PREFIX + "_30x_2eservice"  # a leading digit
    assert unit_object_path("") == UNIT_PATH_PREFIX + "_"


@given(st.text(min_size=1, max_size=40))
def test_the_path_reads_back_as_the_name(name):
    path = unit_object_path(name)
    assert unit_name_from_path(path) == name.encode().decode(errors="replace")
    assert all(c.isascii() and (c.isalnum() or c in "_/") for c in path)


def test_rules_name_the_unit_or_every_unit():
    props, removed = unit_match_rules("a.service")
    assert f"path='{unit_object_path('a.service')}'" in props and "arg0='org.freedesktop.systemd1.Unit'" in props
    assert "member='UnitRemoved'" in removed and "arg0='a.service'" in removed
    props, removed = unit_match_rules(None)
    assert "path_namespace='/org/freedesktop/systemd1/unit'" in props and "arg0=" not in removed
