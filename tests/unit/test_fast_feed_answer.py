"""fleetctl's fast path reads the change feed's answers (fleetctl/fast_http.py Api.feed_path and
feed_answer): the units come only from a server that sent them (else the wait reads them
itself, as against fleet's own API or an older fleetd), filtered to the names asked."""

from __future__ import annotations

import json

import pytest

from fleetctl.fast_http import Api, Failed


def api() -> Api:
    return Api({"display": "unix:///x", "prefix": "", "timeout": 1.0})


def test_the_feed_path_asks_for_units_only_with_names():
    assert Api.feed_path(["a.service"], None, 0.0, True) == "/fleet/v1/_watch/units?unitName=a.service&units=true"
    assert Api.feed_path(["a.service"], 7, 30.0, True) == (
        "/fleet/v1/_watch/units?unitName=a.service&since=7&timeout=30&units=true&wake=states")
    assert Api.feed_path([], 7, 1.5, True) == "/fleet/v1/_watch/units?since=7&timeout=1.5"
    assert Api.feed_path(["a.service"], None, 0.0, False) == "/fleet/v1/_watch/units?unitName=a.service"


@pytest.mark.parametrize("status, body, expected", [
    (200, {"revision": 9, "changed": True, "units": [{"name": "a.service", "currentState": "launched"},
                                                     {"name": "other.service"}, "junk"]},
     (9, {"a.service": {"name": "a.service", "currentState": "launched"}})),
    (200, {"revision": 9, "changed": True, "units": []}, (9, {})),  # none of them exists (yet)
    (200, {"revision": 9, "changed": True}, (9, None)),  # an older fleetd: read them yourself
    (200, {"revision": 9, "changed": False}, (9, None)),
    (200, {"units": []}, (None, None)),  # not a feed: poll
    (404, {"error": {"code": 404, "message": "not found"}}, (None, None)),  # fleet's own API
    (405, {}, (None, None)),
])
def test_feed_answers(status, body, expected):
    assert api().feed_answer("/p", status, json.dumps(body).encode(), ["a.service"]) == expected


def test_a_feed_error_is_the_full_clis_error():
    with pytest.raises(Failed, match="^Error: bad since$"):
        api().feed_answer("/p", 400, b'{"error": {"code": 400, "message": "bad since"}}', ["a.service"])
