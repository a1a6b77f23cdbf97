"""schemathesis hooks for tests/test_api_fuzz.py (loaded through SCHEMATHESIS_HOOKS).

`journal?follow=true` streams until the client goes away, by design: the fuzzer would see every
such case as a hang. It is turned into follow=false here; tests/test_api.py checks follow.
"""

import schemathesis

_TRUE = {"1", "true", "yes", "on"}


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    query = case.query
    if query and str(query.get("follow", "")).lower() in _TRUE:
        query["follow"] = "false"
