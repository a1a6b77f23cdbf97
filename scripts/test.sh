#!/usr/bin/env bash
# The test command: install what is needed, then run every test (lab tests included).
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not lab"` or `scripts/test.sh tests/etcd/test_registry.py`.
set -uo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh || exit 1
.venv/bin/python -m pytest -p no:cacheprovider "$@"
status=$?
if [ "$status" -eq 5 ]; then
    echo "test.sh: pytest collected no tests (exit 5)" >&2
    exit 1
fi
exit "$status"
