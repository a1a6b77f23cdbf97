"""schemathesis hooks for tests/etcd/test_api_fuzz.py (loaded through SCHEMATHESIS_HOOKS).

Some requests are held or streamed on purpose, and the fuzzer would see every such case as a hang:

* `journal?follow=true` streams until the client goes away: turned into follow=false
  (tests/etcd/test_api.py checks follow);
* `endpoints?watch=true` (both endpoints routes) streams application/x-ndjson until the client
  goes away: turned into watch=false (tests/etcd/test_api_openapi.py reads a stream's first line);
* `_watch/units?since=R` is held up to `timeout` seconds (default 30, capped at 60): the hold is
  cut to at most HOLD seconds, a timeout that is not a number is left alone (400);
* `/dashboard/events` (Server-Sent Events) streams whatever the query: not fuzzed at all
  (test_api_fuzz.py excludes it on the command line; test_api_openapi.py reaches its statuses).
"""

import schemathesis

_TRUE = {"1", "true", "yes", "on"}
HOLD = 0.5


def _bounded(value) -> bool:
    try:
        return float(value) <= HOLD  # NaN and inf are not
    except (TypeError, ValueError):
        return True  # not a number: the server answers 400 at once


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    query = case.query
    if not query:
        return
    for flag in ("follow", "watch"):
        if str(query.get(flag, "")).lower() in _TRUE:
            query[flag] = "false"
    if case.path.endswith("/_watch/units") and "since" in query:
        timeout = query.get("timeout")
        if timeout is None or isinstance(timeout, list) or not _bounded(timeout):
            query["timeout"] = str(HOLD)
